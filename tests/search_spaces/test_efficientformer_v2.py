"""EfficientFormerV2 family: reference numbers, analytic costs vs built modules, rules, layer walk, shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from search_spaces import (
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
from search_spaces.families import efficientformer_v2 as v2
from search_spaces.layers import LayerSpec, specs_by_key
from search_spaces.ops import STATIC_OPS

SPACE = get_space("efficientformer_v2")

# REFERENCE.md: torch parameter count (distillation head included) and README GMACs at 224.
REFERENCE_NUMBERS = {
    "s0": (3.60e6, 0.40e9),
    "s1": (6.19e6, 0.65e9),
    "s2": (12.71e6, 1.25e9),
    "l": (26.32e6, 2.56e9),
}


def _param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _replace_block(arch: Architecture, stage_index: int, slot: int, block: Block) -> Architecture:
    stage = arch.stages[stage_index]
    blocks = list(stage.blocks)
    blocks[slot] = block
    return arch.replace_stage(stage_index, Stage(stage.width, tuple(blocks)))


# -- references ---------------------------------------------------------------------------------
def test_references_are_listed() -> None:
    assert SPACE.references() == ("l", "s0", "s1", "s2")


@pytest.mark.parametrize("variant", sorted(REFERENCE_NUMBERS))
def test_reference_params_and_macs_match_published(variant: str) -> None:
    arch = SPACE.reference(variant)
    params, macs = REFERENCE_NUMBERS[variant]
    assert arch.resolution == 224 and arch.num_classes == 1000
    assert count_params(arch) == pytest.approx(params, rel=0.005)
    assert count_macs(arch) == pytest.approx(macs, rel=0.03)


@pytest.mark.parametrize("variant", sorted(REFERENCE_NUMBERS))
def test_reference_count_equals_built_model(variant: str) -> None:
    arch = SPACE.reference(variant)
    assert count_params(arch) == _param_count(build_model(arch))


def test_reference_layouts_follow_official_configs() -> None:
    s2 = SPACE.reference("s2")
    assert s2.widths == (32, 64, 144, 288) and s2.depths == (4, 4, 12, 8)
    # the last 4 blocks of S3 and S4 are attention blocks, with the official per-block expansions
    assert [b.type for b in s2.stages[2].blocks] == ["ffn"] * 8 + ["attn_ffn"] * 4
    assert [b.expansion for b in s2.stages[3].blocks] == [4, 4, 3, 3, 3, 3, 4, 4]


# -- analytic costs vs modules ---------------------------------------------------------------------
def _cost_check_architectures() -> list[Architecture]:
    archs = [SPACE.reference(name) for name in SPACE.references()]
    archs += [SPACE.largest(), SPACE.smallest()]
    archs += [SPACE.sample(np.random.default_rng(seed)) for seed in range(10)]
    return archs


def test_every_spec_cost_params_equal_its_built_module() -> None:
    specs = specs_by_key(spec for arch in _cost_check_architectures() for spec in SPACE.layer_specs(arch))
    assert {spec.kind for spec in specs.values()} == {
        "ffn",
        "attn_ffn",
        "efficientformer_v2.stem",
        "efficientformer_v2.downsample",
        "efficientformer_v2.head",
    }
    for key, spec in specs.items():
        assert layer_cost(spec).params == _param_count(build_layer(spec)), key


def test_stem_and_attention_macs_follow_the_shapes() -> None:
    stem = LayerSpec("efficientformer_v2.stem", 3, 32, (224, 224), stride=4)
    # conv3x3 3->16 at 112x112, then 16->32 at 56x56
    assert layer_cost(stem).macs == 3 * 16 * 9 * 112 * 112 + 16 * 32 * 9 * 56 * 56
    strided = layer_cost(LayerSpec("attn_ffn", 96, 96, (14, 14), expansion=4, options=(("strided", True),)))
    # scores and weighted sum over a 7x7 grid: 8 heads x 49 x 49 x (32 + 128)
    assert strided.op("matmul").macs == 8 * 49 * 49 * (32 + 128)
    # q and v transposed to (B, heads, N, d) (k is already (B, heads, d, N)), the output back, the x2 upsample
    assert strided.op("layout").calls == 4
    ffn = layer_cost(LayerSpec("ffn", 96, 96, (14, 14), expansion=4))
    assert ffn.op("matmul").macs == 0 and ffn.op("layout").calls == 0 and ffn.token_elements == 0
    assert ffn.op("batchnorm").calls == 3 and ffn.op("activation").calls == 2 and ffn.op("layernorm").calls == 0


def test_attention_bias_tables_match_official_sizes_at_224() -> None:
    s0 = SPACE.reference("s0")
    model = build_model(s0)
    # S3 attention is strided to 7x7 (49 offsets), S4 runs at 7x7; the downsample's 7x7 queries
    # over 14x14 keys at step 2 give 14 offsets per axis (196)
    assert model.stages[2].blocks[4].token_mixer.bias.biases.shape == (8, 49)
    assert model.stages[3].blocks[3].token_mixer.bias.biases.shape == (8, 49)
    assert model.stages[3].downsample.attention.bias.biases.shape == (8, 196)


def test_bias_index_numbers_offsets_like_the_official_code() -> None:
    index = v2._bias_index((2, 2), (2, 2), 1)
    assert index.tolist() == [[0, 1, 2, 3], [1, 0, 3, 2], [2, 3, 0, 1], [3, 2, 1, 0]]


# -- rules ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "path"),
    [
        (lambda a: _replace_block(a, 0, 1, Block("attn_ffn", 4)), "stages[0].blocks[1].type"),
        (lambda a: _replace_block(a, 1, 0, Block("attn_ffn", 4)), "stages[1].blocks[0].type"),
        (lambda a: _replace_block(a, 2, 1, Block("ffn", 5)), "stages[2].blocks[1].expansion"),
        (lambda a: _replace_block(a, 3, 0, Block("attn_ffn")), "stages[3].blocks[0].expansion"),
        (lambda a: _replace_block(a, 3, 2, Block("attn_ffn", 4, heads=8)), "stages[3].blocks[2].heads"),
        (lambda a: _replace_block(a, 2, 0, Block("meta3d", 4)), "stages[2].blocks[0].type"),
        (lambda a: a.replace_stage(2, Stage(100, a.stages[2].blocks)), "stages[2].width"),
        (lambda a: a.replace_stage(0, Stage(48, a.stages[0].blocks)), "stages[0].width"),
        (lambda a: a.replace_stage(2, Stage(96, (Block("ffn", 4),) * 16)), "stages[2].blocks"),
        (lambda a: a.replace_stage(3, Stage(176, (Block("identity"), Block("identity")))), "stages[3].blocks"),
    ],
)
def test_family_rules_name_the_field(change, path: str) -> None:
    arch = change(SPACE.reference("s0"))
    with pytest.raises(ArchitectureError) as raised:
        SPACE.validate(arch)
    assert raised.value.path == path


def test_attention_blocks_anywhere_in_s3_and_s4_are_valid() -> None:
    arch = _replace_block(SPACE.reference("s0"), 2, 0, Block("attn_ffn", 2))
    arch = _replace_block(arch, 3, 0, Block("attn_ffn", 3))
    assert SPACE.validate(arch) is arch


# -- layer walk -----------------------------------------------------------------------------------
def test_layer_specs_of_s0() -> None:
    specs = SPACE.layer_specs(SPACE.reference("s0"))
    assert [s.where for s in specs[:4]] == ["stem", "stages.0.blocks.0", "stages.0.blocks.1", "stages.1.downsample"]
    assert specs[0].input_size == (224, 224) and specs[0].stride == 4
    downsamples = [s for s in specs if s.kind == "efficientformer_v2.downsample"]
    assert [s.where for s in downsamples] == ["stages.1.downsample", "stages.2.downsample", "stages.3.downsample"]
    assert [s.option("attention") for s in downsamples] == [False, False, True]
    assert [s.input_size for s in downsamples] == [(56, 56), (28, 28), (14, 14)]
    attention = [s for s in specs if s.kind == "attn_ffn"]
    assert [(s.where, s.option("strided"), s.input_size) for s in attention] == [
        ("stages.2.blocks.4", True, (14, 14)),
        ("stages.2.blocks.5", True, (14, 14)),
        ("stages.3.blocks.2", False, (7, 7)),
        ("stages.3.blocks.3", False, (7, 7)),
    ]
    assert all(s.heads is None for s in specs)
    head = specs[-1]
    assert (head.kind, head.in_channels, head.out_channels, head.input_size) == ("efficientformer_v2.head", 176, 1000, (7, 7))


def test_identity_slots_keep_indices_and_are_not_priced() -> None:
    arch = SPACE.reference("s0")
    arch = _replace_block(arch, 2, 1, Block("identity"))
    arch = _replace_block(arch, 3, 1, Block("identity"))
    wheres = [s.where for s in SPACE.layer_specs(arch)]
    assert "stages.2.blocks.1" not in wheres and "stages.2.blocks.2" in wheres
    assert "stages.3.blocks.1" not in wheres and "stages.3.blocks.3" in wheres
    assert count_params(arch) < count_params(SPACE.reference("s0"))


def test_largest_has_the_layout_of_v2_l() -> None:
    arch = SPACE.largest()
    assert arch.widths == (40, 80, 192, 384) and arch.depths == (5, 5, 15, 10)
    assert [b.type for b in arch.stages[2].blocks] == ["ffn"] * 9 + ["attn_ffn"] * 6
    assert [b.type for b in arch.stages[3].blocks] == ["ffn"] * 4 + ["attn_ffn"] * 6
    assert {b.expansion for stage in arch.stages for b in stage.blocks} == {4}
    smallest = SPACE.smallest()
    assert smallest.widths == (24, 40, 80, 160) and smallest.depths == (1, 1, 1, 1)
    assert {b.type for stage in smallest.stages for b in stage.blocks} == {"ffn"}


# -- shapes ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strided", [True, False])
def test_attention_block_keeps_the_shape(strided: bool) -> None:
    spec = LayerSpec("attn_ffn", 88, 88, (8, 6), expansion=2, options=(("strided", strided),))
    block = build_layer(spec).eval()
    x = torch.randn(2, 88, 8, 6)
    with torch.no_grad():
        y = block(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    # layer scale starts at 1e-5, so a fresh block is almost the identity
    assert torch.allclose(y, x, atol=1e-2)
    grid = (4, 3) if strided else (8, 6)
    assert block.token_mixer.bias.biases.shape == (8, grid[0] * grid[1])


def test_attention_refuses_another_grid_than_it_was_built_for() -> None:
    block = build_layer(LayerSpec("attn_ffn", 96, 96, (4, 4), expansion=2, options=(("strided", False),))).eval()
    with pytest.raises(ValueError, match="built for"):
        block(torch.randn(1, 96, 6, 6))


def test_attention_downsample_halves_resolution_and_changes_width() -> None:
    spec = LayerSpec("efficientformer_v2.downsample", 96, 176, (4, 4), stride=2, options=(("attention", True),))
    layer = build_layer(spec).eval()
    with torch.no_grad():
        y = layer(torch.randn(2, 96, 4, 4))
    assert y.shape == (2, 176, 2, 2)
    assert layer.attention.bias.biases.shape == (8, 16)  # |2i - j| for i < 2, j < 4: 4 values per axis


def test_head_averages_classifier_and_distillation_logits() -> None:
    head = build_layer(LayerSpec("efficientformer_v2.head", 64, 10, (2, 2))).eval()
    x = torch.randn(3, 64, 2, 2)
    with torch.no_grad():
        features = head.norm(x).mean((2, 3))
        expected = (head.classifier(features) + head.distillation(features)) / 2
        assert torch.allclose(head(x), expected, atol=1e-6)


def test_blocks_are_made_of_the_given_ops() -> None:
    class CountingOps(type(STATIC_OPS)):
        def __init__(self) -> None:
            self.calls = 0

        def conv2d(self, *args, **kwargs):
            self.calls += 1
            return super().conv2d(*args, **kwargs)

    ops = CountingOps()
    build_layer(LayerSpec("attn_ffn", 96, 96, (4, 4), expansion=2, options=(("strided", True),)), ops)
    # q, k, v, proj, FFN expand + project; talking heads are plain torch (fixed head count)
    assert ops.calls == 6


def test_sample_with_identity_gaps_runs_at_64() -> None:
    arch = Architecture(
        "efficientformer_v2",
        64,
        1000,
        (
            Stage(24, (Block("identity"), Block("ffn", 2))),
            Stage(48, (Block("ffn", 3), Block("identity"), Block("ffn", 4))),
            Stage(120, (Block("attn_ffn", 2), Block("identity"), Block("identity"), Block("ffn", 3), Block("attn_ffn", 4))),
            Stage(200, (Block("ffn", 2), Block("identity"), Block("attn_ffn", 3))),
        ),
    )
    SPACE.validate(arch)
    model = build_model(arch).eval()
    assert isinstance(model.stages[2].blocks[1], torch.nn.Identity)
    assert count_params(arch) == _param_count(model)
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()


@pytest.mark.parametrize("which", ["largest", "smallest", "s0"])
def test_networks_run_at_64(which: str) -> None:
    arch = getattr(SPACE, which)(resolution=64, num_classes=10) if which != "s0" else SPACE.reference("s0")
    if which == "s0":
        arch = Architecture(arch.space, 64, 10, arch.stages)
    model = build_model(arch).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
