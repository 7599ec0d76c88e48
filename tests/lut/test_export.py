"""ONNX export (TorchScript exporter) of every layer kind of every space, run by onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lut.build import enumerate_specs
from lut.registry import get_device
from lut.profiler import export_onnx
from search_spaces import build_layer, get_space, list_spaces


def one_spec_per_variant(space_name: str):
    """The smallest spec of each (kind, stride, options) of the space at 64 px: every block type."""
    space = get_space(space_name)
    smallest = [(stage.widths[0],) for stage in space.stages]
    chosen = {}
    for spec in enumerate_specs(space, 64, 10, smallest).values():
        chosen.setdefault((spec.kind, spec.stride, spec.options, spec.heads is None), spec)
    return list(chosen.values())


@pytest.mark.parametrize("space_name", list_spaces())
def test_every_layer_kind_exports_and_matches_torch(space_name):
    device = get_device("ort-cpu")
    specs = one_spec_per_variant(space_name)
    kinds = {spec.kind for spec in specs}
    assert set(get_space(space_name).block_types) <= kinds  # every block type is covered
    for spec in specs:
        torch.manual_seed(0)
        module = build_layer(spec).eval()
        shape = spec.input_shape(1)
        session = device.session(export_onnx(module, shape))
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        (ours,) = session.run(None, {"input": x})
        with torch.no_grad():
            expected = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(ours, expected, rtol=1e-3, atol=1e-4, err_msg=spec.key())
