"""The ONNX graphs latnas exports: the fused form where one exists, the same function always."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from lut import get_device
from lut.onnx_fusion import fold_batch_norms_into_pointwise_convs
from lut.profiler import export_onnx
from search_spaces import build_model, get_space
from search_spaces.families.edgenext import SDTAEncoder
from search_spaces.ops import ChannelLayerNorm

_BATCHNORM = "BatchNormalization"


def _trained_looking(module: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for norm in module.modules():
            if isinstance(norm, nn.BatchNorm2d):
                norm.running_mean.normal_(0.0, 0.5, generator=generator)
                norm.running_var.uniform_(0.5, 2.0, generator=generator)
                norm.weight.uniform_(0.5, 1.5, generator=generator)
                norm.bias.normal_(0.0, 0.2, generator=generator)
    return module.eval()


def _ops(model_bytes: bytes) -> Counter:
    return Counter(node.op_type for node in onnx.load_from_string(model_bytes).graph.node)


def _onnx_output(model_bytes: bytes, x: torch.Tensor) -> np.ndarray:
    session = get_device("ort-cpu").session(model_bytes)
    return session.run(None, {"input": x.numpy()})[0]


def _assert_same_function(module: nn.Module, model_bytes: bytes, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected = module(x).numpy()
    actual = _onnx_output(model_bytes, x)
    assert np.abs(actual - expected).max() <= 1e-5 * max(np.abs(expected).max(), 1.0)


class _NormThenProject(nn.Module):
    def __init__(self, kernel: int, padding: int, bias: bool = True) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(6)
        self.conv = nn.Conv2d(6, 5, kernel, padding=padding, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))


class _NormUsedTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(6)
        self.conv = nn.Conv2d(6, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        return self.conv(y) + y[:, :5]


@pytest.mark.parametrize("bias", [True, False])
def test_batch_norm_before_a_pointwise_conv_is_folded_into_it(bias: bool) -> None:
    module = _trained_looking(_NormThenProject(1, 0, bias))
    x = torch.randn(2, 6, 7, 5)
    data = export_onnx(module, tuple(x.shape))
    assert _ops(data)[_BATCHNORM] == 0
    onnx.checker.check_model(onnx.load_from_string(data))
    _assert_same_function(module, data, x)


@pytest.mark.parametrize("module", [_NormThenProject(3, 1), _NormUsedTwice()], ids=["padded 3x3", "two consumers"])
def test_batch_norm_is_kept_where_folding_would_change_the_function(module: nn.Module) -> None:
    module = _trained_looking(module)
    x = torch.randn(2, 6, 7, 5)
    data = export_onnx(module, tuple(x.shape))
    assert _ops(data)[_BATCHNORM] == 1
    _assert_same_function(module, data, x)


def test_folding_returns_how_many_it_folded_and_leaves_a_valid_graph() -> None:
    import io

    module = _trained_looking(_NormThenProject(1, 0))
    buffer = io.BytesIO()
    torch.onnx.export(module, (torch.randn(1, 6, 4, 4),), buffer, input_names=["input"], output_names=["output"],
                      opset_version=17, dynamo=False)
    model = onnx.load_from_string(buffer.getvalue())
    assert fold_batch_norms_into_pointwise_convs(model) == 1
    assert fold_batch_norms_into_pointwise_convs(model) == 0  # nothing left to fold
    onnx.checker.check_model(model)
    assert not [tensor for tensor in model.graph.initializer if "norm" in tensor.name]  # no dead initializers


@pytest.mark.slow
@pytest.mark.parametrize(("space_name", "reference"), [("edgenext", "xxs"), ("edgevit", "xxs")])
def test_reference_exports_use_the_fused_forms(space_name: str, reference: str) -> None:
    """Channels-first LayerNorm as one LayerNormalization, no Pow of traced shapes, BatchNorm
    folded wherever a pointwise conv follows it (only a head's BatchNorm, before the pooling, stays)."""
    arch = get_space(space_name).reference(reference)
    arch = arch.__class__(arch.space, 64, 10, arch.stages)
    torch.manual_seed(0)
    model = _trained_looking(build_model(arch))
    x = torch.randn(1, 3, 64, 64)
    data = export_onnx(model, tuple(x.shape))
    ops = _ops(data)
    assert ops["Pow"] == 0 and ops["Sqrt"] == 0
    assert ops["ReduceMean"] <= 1  # the head's global average pool
    assert ops[_BATCHNORM] <= 1  # the head's
    norms = sum(1 for m in model.modules() if isinstance(m, (nn.LayerNorm, ChannelLayerNorm)))
    assert ops["LayerNormalization"] == norms
    if space_name == "edgenext":
        # only SDTA blocks multiply on tokens (qkv, two attention products, proj, two MLP linears)
        # and the head classifies; the conv encoders' MLPs run as 1x1 convolutions
        sdta_blocks = sum(1 for m in model.modules() if isinstance(m, SDTAEncoder))
        assert ops["Gemm"] + ops["MatMul"] == 6 * sdta_blocks + 1
    _assert_same_function(model, data, x)
