"""EfficientFormer V1 family: reference counts, the meta3d-last rule, the 4D/token layout flags."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from search_spaces import (
    STATIC_OPS,
    Architecture,
    ArchitectureError,
    Block,
    Stage,
    build_layer,
    build_model,
    count_macs,
    count_params,
    get_space,
    layer_cost,
)
from search_spaces.families.efficientformer_v1 import (
    ATTENTION_HEADS,
    ClassifierHead,
    Downsample,
    Meta3DBlock,
    PoolingMixer,
)
from search_spaces.layers import LayerSpec

SPACE = get_space("efficientformer_v1")

# REFERENCE.md: torch parameter count (distillation head included) and GMACs at 224
REFERENCE_COUNTS = {"l1": (12.29e6, 1.30e9), "l3": (31.41e6, 3.93e9), "l7": (82.23e6, 10.16e9)}
REFERENCE_LAYOUTS = {  # widths, depths, meta3d blocks at the end of stage 4
    "l1": ((48, 96, 224, 448), (3, 2, 6, 4), 1),
    "l3": ((64, 128, 320, 512), (4, 4, 12, 6), 4),
    "l7": ((96, 192, 384, 768), (6, 6, 18, 8), 8),
}


def _torch_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _params_on_meta(build) -> int:
    """Parameter count of a module built on the meta device: same modules, no memory, no init time."""
    with torch.device("meta"):
        return _torch_params(build())


def _arch(stage_types: list[list[str]], widths=(48, 96, 224, 448), resolution: int = 64) -> Architecture:
    stages = tuple(
        Stage(width, tuple(Block(t) if t == "identity" else Block(t, 4) for t in types))
        for width, types in zip(widths, stage_types)
    )
    return Architecture("efficientformer_v1", resolution, 10, stages)


def _spec_at(arch: Architecture, where: str) -> LayerSpec:
    return next(spec for spec in SPACE.layer_specs(arch) if spec.where == where)


# -- references ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_reference_layout_matches_the_official_config(name):
    widths, depths, meta3d_count = REFERENCE_LAYOUTS[name]
    arch = SPACE.reference(name)
    assert arch.widths == widths and arch.depths == depths and arch.resolution == 224
    types = [block.type for stage in arch.stages for block in stage.blocks]
    assert types == ["meta4d"] * (sum(depths) - meta3d_count) + ["meta3d"] * meta3d_count


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_reference_params_and_macs_match_the_paper(name):
    params, macs = REFERENCE_COUNTS[name]
    arch = SPACE.reference(name)
    assert count_params(arch) == pytest.approx(params, rel=0.005)
    assert count_macs(arch) == pytest.approx(macs, rel=0.03)


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_reference_count_params_equals_the_built_model(name):
    arch = SPACE.reference(name)
    assert count_params(arch) == _params_on_meta(lambda: build_model(arch))


def test_l1_built_for_real_has_the_counted_params():
    arch = SPACE.reference("l1")
    assert count_params(arch) == _torch_params(build_model(arch))


def test_each_distinct_spec_costs_the_params_of_its_module():
    rng = np.random.default_rng(2024)
    archs = [SPACE.reference(name) for name in SPACE.references()]
    archs += [SPACE.largest(), SPACE.smallest(), *(SPACE.sample(rng) for _ in range(10))]
    archs.append(_arch([["meta4d"], ["meta4d"], ["meta4d", "meta3d"], ["meta3d"]], resolution=224))
    specs = {spec.key(): spec for arch in archs for spec in SPACE.layer_specs(arch)}
    assert {spec.kind for spec in specs.values()} >= {
        "meta4d",
        "meta3d",
        "efficientformer_v1.stem",
        "efficientformer_v1.downsample",
        "efficientformer_v1.head",
    }
    for key, spec in specs.items():
        assert layer_cost(spec).params == _params_on_meta(lambda spec=spec: build_layer(spec)), key


# -- rules -----------------------------------------------------------------------------------
def test_meta4d_after_meta3d_in_the_same_stage_is_refused():
    arch = _arch([["meta4d"], ["meta4d"], ["meta4d"], ["meta4d", "meta3d", "identity", "meta4d"]])
    with pytest.raises(ArchitectureError) as error:
        SPACE.validate(arch)
    assert error.value.path == "stages[3].blocks[3].type"
    assert "once" in error.value.reason and "stages[3].blocks[1]" in error.value.reason


def test_meta3d_in_stage_3_forces_stage_4_to_be_meta3d():
    arch = _arch([["meta4d"], ["meta4d"], ["meta4d", "meta3d"], ["meta3d", "meta4d"]])
    with pytest.raises(ArchitectureError) as error:
        SPACE.validate(arch)
    assert error.value.path == "stages[3].blocks[1].type"
    arch = _arch([["meta4d"], ["meta4d"], ["meta3d"], ["identity", "meta4d"]])
    with pytest.raises(ArchitectureError) as error:
        SPACE.validate(arch)
    assert error.value.path == "stages[3].blocks[1].type"


@pytest.mark.parametrize("stage_index", [0, 1])
def test_meta3d_is_refused_in_the_first_two_stages(stage_index):
    types = [["meta4d"], ["meta4d"], ["meta3d"], ["meta3d"]]
    types[stage_index] = ["meta4d", "meta3d"]
    with pytest.raises(ArchitectureError) as error:
        SPACE.validate(_arch(types))
    assert error.value.path == f"stages[{stage_index}].blocks[1].type"


def test_meta3d_needs_its_expansion():
    arch = _arch([["meta4d"], ["meta4d"], ["meta4d"], ["meta4d"]])
    arch = arch.replace_stage(3, Stage(448, (Block("meta4d", 4), Block("meta3d"))))
    with pytest.raises(ArchitectureError) as error:
        SPACE.validate(arch)
    assert error.value.path == "stages[3].blocks[1].expansion"


# -- extremes and samples --------------------------------------------------------------------
def test_largest_has_the_l7_layout_and_smallest_is_all_4d():
    largest = SPACE.largest()
    assert largest.widths == (96, 192, 384, 768) and largest.depths == (6, 6, 18, 8)
    assert [b.type for s in largest.stages[:3] for b in s.blocks] == ["meta4d"] * 30
    assert [b.type for b in largest.stages[3].blocks] == ["meta3d"] * 8
    smallest = SPACE.smallest()
    assert smallest.widths == (48, 96, 224, 448) and smallest.depths == (1, 1, 1, 1)
    assert {b.type for s in smallest.stages for b in s.blocks} == {"meta4d"}


def test_samples_put_meta3d_last_and_reach_every_layout():
    layouts = set()
    for seed in range(60):
        arch = SPACE.sample(np.random.default_rng(seed))
        SPACE.validate(arch)
        types = [b.type for s in arch.stages for b in s.blocks]
        first_meta3d = types.index("meta3d") if "meta3d" in types else len(types)
        assert set(types[first_meta3d:]) <= {"meta3d"}
        layouts.add(("meta3d" in types, any(b.type == "meta3d" for b in arch.stages[2].blocks)))
    assert layouts == {(False, False), (True, False), (True, True)}


def test_repair_turns_meta4d_after_meta3d_into_meta3d():
    drawn = _arch([["meta4d"], ["meta4d"], ["meta4d", "meta3d"], ["meta4d", "meta4d"]])
    repaired = SPACE.repair_sample(drawn)
    assert [b.type for b in repaired.stages[3].blocks] == ["meta3d", "meta3d"]
    assert repaired.stages[2] == drawn.stages[2]
    SPACE.validate(repaired)


# -- layout flags and shapes -----------------------------------------------------------------
def test_layout_flags_of_a_network_with_meta3d_in_stage_3():
    arch = _arch([["meta4d"], ["meta4d"], ["meta4d", "meta3d", "identity", "meta3d"], ["meta3d", "meta3d"]])
    assert _spec_at(arch, "stages.2.blocks.1").option("to_tokens") is True
    assert _spec_at(arch, "stages.2.blocks.3").option("to_tokens") is False
    assert _spec_at(arch, "stages.3.downsample").option("from_tokens") is True
    assert _spec_at(arch, "stages.3.blocks.0").option("to_tokens") is True
    assert _spec_at(arch, "stages.3.blocks.1").option("to_tokens") is False
    assert _spec_at(arch, "head").option("from_tokens") is True
    assert _spec_at(arch, "stages.2.downsample").option("from_tokens") is False
    assert _spec_at(arch, "stages.2.blocks.0").options == ()


def test_layout_flags_of_an_all_4d_network():
    arch = _arch([["meta4d"], ["meta4d"], ["meta4d"], ["meta4d", "meta4d"]])
    assert all(spec.option("from_tokens") is False for spec in SPACE.layer_specs(arch) if "from_tokens" in dict(spec.options))
    head = build_layer(_spec_at(arch, "head"))
    assert isinstance(head.norm, nn.LayerNorm)
    reshapes = [spec.where for spec in SPACE.layer_specs(arch) if layer_cost(spec).op("layout").calls]
    assert reshapes == ["head"]  # only the head flattens, to pool tokens


def test_one_reshape_to_tokens_when_meta3d_is_only_in_stage_4():
    arch = SPACE.reference("l3")
    flattening = [spec.where for spec in SPACE.layer_specs(arch) if spec.option("to_tokens")]
    assert flattening == ["stages.3.blocks.2"]
    assert not _spec_at(arch, "stages.3.downsample").option("from_tokens")


def test_meta3d_turns_a_4d_map_into_tokens_and_the_downsample_restores_it():
    torch.manual_seed(0)
    flatten = Meta3DBlock(STATIC_OPS, 32, 4, (4, 3), to_tokens=True).eval()
    maps = torch.randn(2, 32, 4, 3)
    with torch.no_grad():
        tokens = flatten(maps)
    assert tokens.shape == (2, 12, 32)
    # the bias table has one entry per (|dy|, |dx|) offset of the 4 x 3 grid, per head
    assert flatten.token_mixer.attention_biases.shape == (ATTENTION_HEADS, 12)
    from_tokens = Downsample(STATIC_OPS, 32, 48, (4, 3), from_tokens=True).eval()
    from_maps = Downsample(STATIC_OPS, 32, 48, (4, 3), from_tokens=False).eval()
    from_maps.load_state_dict(from_tokens.state_dict())
    with torch.no_grad():
        restored = from_tokens(tokens)
        expected = from_maps(tokens.transpose(1, 2).reshape(2, 32, 4, 3))
    assert restored.shape == (2, 48, 2, 2)
    assert torch.allclose(restored, expected)


def test_head_outputs_the_mean_of_classifier_and_distillation_logits():
    torch.manual_seed(0)
    head = ClassifierHead(STATIC_OPS, 16, 5, from_tokens=True).eval()
    tokens = torch.randn(2, 9, 16)
    with torch.no_grad():
        pooled = head.norm(tokens).mean(1)
        expected = (head.head(pooled) + head.dist_head(pooled)) / 2
        assert torch.allclose(head(tokens), expected)
        assert not torch.allclose(head.head(pooled), head.dist_head(pooled))


def test_pooling_mixer_ignores_padding():
    constant = torch.full((1, 2, 5, 5), 3.0)
    assert torch.count_nonzero(PoolingMixer()(constant)) == 0  # count_include_pad=False: borders too


def test_sample_with_identity_gaps_builds_and_runs():
    arch = _arch(
        [
            ["meta4d", "identity", "meta4d"],
            ["identity", "meta4d"],
            ["meta4d", "identity", "meta3d", "identity", "meta3d"],
            ["identity", "meta3d", "identity", "meta3d"],
        ]
    )
    SPACE.validate(arch)
    model = build_model(arch).eval()
    assert isinstance(model.stages[2].blocks[1], nn.Identity)
    assert isinstance(model.stages[2].blocks[2], Meta3DBlock) and model.stages[2].blocks[2].to_tokens
    assert isinstance(model.stages[3].blocks[1], Meta3DBlock) and model.stages[3].blocks[1].to_tokens
    assert not model.stages[3].blocks[3].to_tokens
    torch.manual_seed(0)
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    assert count_params(arch) == _torch_params(model)


def test_spec_changes_with_resolution_only_through_input_size():
    at_224 = SPACE.layer_specs(SPACE.reference("l1"))
    at_64 = SPACE.layer_specs(dataclasses.replace(SPACE.reference("l1"), resolution=64))
    assert [s.where for s in at_224] == [s.where for s in at_64]
    assert _spec_at(SPACE.reference("l1"), "stages.3.blocks.3").input_size == (7, 7)
    assert at_64[-2].input_size == (2, 2)
