"""Pricing any network: op classes read from an ONNX graph agree with a trace of the module, and
`lut.predict --device iphone12 MODEL.onnx` refuses what it cannot price with one line."""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch
from torch import nn

from lut.analytic import load_model, model_path
from lut.onnx_costs import OnnxCostError, onnx_costs
from lut.predict import main as predict_main
from lut.predict import predict_module
from lut.profiler import export_onnx
from search_spaces import build_model, get_space, list_spaces, trace_costs
from search_spaces.counting import cost
from tests.cli_support import invoke

RESOLUTION = 64


def _references():
    return [(space, ref) for space in list_spaces() for ref in get_space(space).references()]


@pytest.fixture(scope="module")
def model():
    return load_model(model_path("iphone12"))


@pytest.mark.slow
@pytest.mark.parametrize(("space_name", "reference"), _references())
def test_an_exported_reference_is_priced_as_its_architecture(space_name, reference, model):
    arch = dataclasses.replace(get_space(space_name).reference(reference), resolution=RESOLUTION, num_classes=10)
    torch.manual_seed(0)
    graph = onnx_costs(export_onnx(build_model(arch).eval(), (1, 3, RESOLUTION, RESOLUTION)))
    traced = cost(arch)
    assert model.module_ms(graph) == pytest.approx(model.network_ms(arch), rel=0.02)
    assert graph.macs == pytest.approx(traced.macs, rel=0.02)
    for op in ("conv", "dwconv", "linear", "matmul", "layernorm"):
        assert graph.op(op).calls == traced.op(op).calls, op


def _exported(module: nn.Module, shape, dynamic: bool = False) -> bytes:
    buffer = io.BytesIO()
    axes = {"input": {0: "batch", 2: "height", 3: "width"}} if dynamic else None
    torch.onnx.export(module.eval(), (torch.randn(*shape),), buffer, input_names=["input"], output_names=["output"],
                      opset_version=17, dynamo=False, dynamic_axes=axes)
    return buffer.getvalue()


def test_a_torchvision_style_network_is_priced_from_its_graph_and_its_trace(model):
    from experiments.iphone12_model.networks import MobileNetV2

    torch.manual_seed(0)
    network = MobileNetV2(1.0, num_classes=10)
    graph = onnx_costs(_exported(network, (1, 3, 96, 96)))
    traced = trace_costs(network, (1, 3, 96, 96))
    assert model.module_ms(graph) == pytest.approx(model.module_ms(traced), rel=0.02)
    assert predict_module(network, (1, 3, 96, 96)) == pytest.approx(model.module_ms(traced))
    assert graph.op("dwconv").calls == 17 and graph.op("activation").calls == 35  # ReLU6 is Clip(0, 6)


def test_a_dynamic_input_needs_an_input_shape(tmp_path, capsys):
    path = tmp_path / "dynamic.onnx"
    path.write_bytes(_exported(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()), (1, 3, 32, 32), dynamic=True))
    code, _, err = invoke(predict_main, "lut.predict", ["--device", "iphone12", str(path)], capsys)
    assert code == 2 and "dynamic dimensions" in err and "--input-shape" in err and len(err.strip().splitlines()) == 1
    code, out, _ = invoke(predict_main, "lut.predict", ["--device", "iphone12", "--input-shape", "1,3,64,64", str(path)], capsys)
    assert code == 0 and "ms (iphone12 analytic model, ONNX graph)" in out


class _Unpriceable(nn.Module):
    def forward(self, x):
        return x.cumsum(1)  # CumSum: no op class prices it


@pytest.mark.parametrize("make, needle", [
    (lambda path: path.write_bytes(b"not an onnx model at all"), "not a readable ONNX model"),
    (lambda path: path.write_bytes(_exported(nn.Conv2d(3, 8, 3), (1, 3, 16, 16))[:200]), "not a readable ONNX model"),
    (lambda path: path.write_bytes(_exported(_Unpriceable(), (1, 3, 16, 16))), "cannot price op type"),
    (lambda path: None, "no such file"),
], ids=["foreign", "truncated", "unpriceable op", "missing"])
def test_what_cannot_be_priced_is_one_line_and_exit_2(make, needle, tmp_path, capsys):
    path = tmp_path / "model.onnx"
    make(path)
    code, _, err = invoke(predict_main, "lut.predict", ["--device", "iphone12", str(path)], capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, needle", [
    (["--device", "ort-cpu", "m.onnx"], "analytic model"),
    (["--device", "iphone12", "--input-shape", "1,3,x", "m.onnx"], "--input-shape"),
    (["--device", "iphone12", "--input-shape", "1,3,100000,100000", "m.onnx"], "--input-shape"),
])
def test_bad_options_for_onnx_models(argv, needle, capsys):
    code, _, err = invoke(predict_main, "lut.predict", argv, capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_breakdown_lists_the_op_classes(tmp_path, capsys):
    arch = get_space("edgevit").reference("xxs")
    path = tmp_path / "xxs.yaml"
    path.write_text(arch.to_yaml())
    code, out, _ = invoke(predict_main, "lut.predict", ["--device", "iphone12", "--breakdown", str(path)], capsys)
    assert code == 0
    shares = {line.split()[0]: float(line.split()[-1].rstrip("%")) for line in out.splitlines()[1:]}
    assert {"channels_last", "layernorm", "conv", "network_fixed"} <= set(shares)
    assert sum(shares.values()) == pytest.approx(100, abs=0.5)


def test_onnx_costs_error_is_a_value_error():
    assert issubclass(OnnxCostError, ValueError)
