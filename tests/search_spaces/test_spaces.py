"""Contracts every registered space keeps: valid extremes and samples, buildable and runnable
networks, analytic parameter counts equal to torch's, stable layer keys."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from search_spaces import LayerSpec, build_model, count_params, get_space, layer_cost, list_spaces
from search_spaces.layers import build_layer

EXPECTED_REFERENCES = {
    "efficientformer_v1": ("l1", "l3", "l7"),
    "efficientformer_v2": ("l", "s0", "s1", "s2"),
    "edgevit": ("s", "xs", "xxs"),
    "edgenext": ("s", "xs", "xxs"),
    "hybrid": ("l", "s0", "s1", "s2"),  # EfficientFormerV2's, every V2 network being a hybrid one
}
SPACES = list_spaces()


def _torch_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _small(arch, resolution=64, num_classes=10):
    return dataclasses.replace(arch, resolution=resolution, num_classes=num_classes)


def test_every_space_is_registered_in_order():
    assert list_spaces() == list(EXPECTED_REFERENCES)


@pytest.mark.parametrize("space_name", SPACES)
def test_references_are_points_of_their_space(space_name):
    space = get_space(space_name)
    assert space.references() == EXPECTED_REFERENCES[space_name]
    largest = space.largest()
    for name in space.references():
        ref = space.reference(name)
        assert space.contains(ref)
        for ref_stage, big_stage in zip(ref.stages, largest.stages):  # inside the largest network
            assert ref_stage.width <= big_stage.width
            assert ref_stage.depth <= big_stage.depth


@pytest.mark.parametrize("space_name", SPACES)
def test_extremes_and_samples_are_valid_and_seeded(space_name):
    space = get_space(space_name)
    assert space.contains(space.largest()) and space.contains(space.smallest())
    first = [space.sample(np.random.default_rng(seed)) for seed in range(30)]
    again = [space.sample(np.random.default_rng(seed)) for seed in range(30)]
    assert first == again
    assert all(space.contains(arch) for arch in first)
    assert len(set(first)) > 25  # really random
    assert count_params(space.smallest()) < min(count_params(a) for a in first) <= count_params(space.largest())


@pytest.mark.parametrize("space_name", list_spaces())
def test_slimmed_samples_are_valid_seeded_and_spread_between_the_extremes(space_name):
    space = get_space(space_name)
    def draw(seed):
        rng = np.random.default_rng(seed)
        return [space.sample_slimmed(rng) for _ in range(20)]

    slimmed = draw(0)
    assert slimmed == draw(0) and slimmed != draw(1)
    for arch in slimmed:
        space.validate(arch)
    sizes = [count_params(arch) for arch in slimmed]
    assert count_params(space.smallest()) <= min(sizes) < max(sizes) <= count_params(space.largest())
    largest_depths = space.largest().depths
    assert max(sum(arch.depths) for arch in slimmed) > 0.7 * sum(largest_depths)  # some stay deep, as searches do
    for arch in slimmed:  # the family's block layout survives: only slots emptied, never a type changed
        for stage, big in zip(arch.stages, space.largest().stages):
            assert all(block.is_identity or block.type == other.type for block, other in zip(stage.blocks, big.blocks))


def test_a_width_change_keeps_head_counts_valid():
    space = get_space("edgenext")
    stage = next(index for index, choices in enumerate(space.stages) if choices.heads)
    largest = space.largest()
    block = next(b for b in largest.stages[stage].blocks if b.heads is not None)
    for width in space.stages[stage].widths:
        assert space.heads_for(stage, width, block).heads in space.valid_heads(space.stages[stage], width)


@pytest.mark.parametrize("space_name", SPACES)
def test_forward_of_extremes_and_references(space_name):
    space = get_space(space_name)
    archs = {"largest": space.largest(), "smallest": space.smallest()}
    archs.update({name: space.reference(name) for name in space.references()})
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    for name, arch in archs.items():
        model = build_model(_small(arch)).eval()
        with torch.no_grad():
            logits = model(images)
        assert logits.shape == (2, 10), name
        assert torch.isfinite(logits).all(), name


@pytest.mark.parametrize("space_name", SPACES)
def test_count_params_equals_the_built_module(space_name):
    space = get_space(space_name)
    rng = np.random.default_rng(7)
    archs = [space.largest(), space.smallest(), *(space.sample(rng) for _ in range(4))]
    archs += [_small(a) for a in archs[:3]]
    for arch in archs:
        assert count_params(arch) == _torch_params(build_model(arch)), arch


@pytest.mark.parametrize("space_name", SPACES)
def test_layer_specs_cover_every_block_slot_in_order(space_name):
    space = get_space(space_name)
    arch = space.sample(np.random.default_rng(3))
    specs = space.layer_specs(arch)
    wheres = [spec.where for spec in specs]
    expected = ["stem"]
    for index, stage in enumerate(arch.stages):
        if index:
            expected.append(f"stages.{index}.downsample")
        expected += [f"stages.{index}.blocks.{slot}" for slot, block in enumerate(stage.blocks) if not block.is_identity]
    expected.append("head")
    assert wheres == expected
    for spec, where in zip(specs, wheres):
        if ".blocks." in where:
            stage, slot = int(where.split(".")[1]), int(where.split(".")[3])
            assert spec.kind == arch.stages[stage].blocks[slot].type


@pytest.mark.parametrize("space_name", SPACES)
def test_layer_cost_params_equal_each_built_layer(space_name):
    space = get_space(space_name)
    specs = {}
    for arch in (space.smallest(), space.sample(np.random.default_rng(11))):
        for spec in space.layer_specs(_small(arch)):
            specs.setdefault(spec.key(), spec)
    for key, spec in specs.items():
        assert layer_cost(spec).params == _torch_params(build_layer(spec)), key


def test_layer_spec_key_is_readable_and_position_free():
    spec = LayerSpec("ffn", 48, 48, (28, 28), expansion=4, options=(("b", 2), ("a", True)), where="stages.1.blocks.0")
    assert spec.key() == "ffn:c48-48:hw28x28:s1:e4:a=1:b=2"
    moved = dataclasses.replace(spec, where="stages.1.blocks.3")
    assert moved == spec and moved.key() == spec.key()


def test_layer_keys_do_not_depend_on_the_interpreter_hash_seed():
    program = (
        "from search_spaces import get_space\n"
        "s = get_space('efficientformer_v2')\n"
        "print('|'.join(x.key() for x in s.layer_specs(s.reference('s1'))))\n"
    )
    outputs = set()
    for seed in ("1", "2"):
        environment = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run([sys.executable, "-c", program], env=environment, capture_output=True, text=True, check=True)
        outputs.add(result.stdout)
    assert len(outputs) == 1
    space = get_space("efficientformer_v2")
    assert outputs.pop().strip() == "|".join(x.key() for x in space.layer_specs(space.reference("s1")))
