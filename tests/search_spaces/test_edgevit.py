"""EdgeViT space (`edgevit`): reference counts, analytic costs vs built modules, rules, LGL shapes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from search_spaces import (
    Architecture,
    ArchitectureError,
    Block,
    LayerSpec,
    Stage,
    build_layer,
    build_model,
    count_macs,
    count_params,
    get_space,
    layer_cost,
)
from search_spaces.families.edgevit import GlobalSparseAttention, LGLBlock
from search_spaces.layers import specs_by_key
from search_spaces.ops import STATIC_OPS

SPACE = get_space("edgevit")

# REFERENCE.md: params of the official code (torch count) and GMACs at 224.
REFERENCE_COUNTS = {"xxs": (4.07e6, 0.56e9), "xs": (6.77e6, 1.14e9), "s": (13.11e6, 1.92e9)}


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _stage(width: int, *blocks: Block) -> Stage:
    return Stage(width, blocks)


def _lgl(heads: int, expansion: int = 4) -> Block:
    return Block("lgl", expansion, heads)


def _small_arch(overrides: dict[int, Stage] | None = None, resolution: int = 224) -> Architecture:
    """The smallest-width one-block-per-stage network, with some stages replaced."""
    stages = {
        0: _stage(36, _lgl(1)),
        1: _stage(72, _lgl(2)),
        2: _stage(144, _lgl(4)),
        3: _stage(288, _lgl(8)),
    }
    stages.update(overrides or {})
    return Architecture("edgevit", resolution, 1000, tuple(stages[i] for i in range(4)))


# -- references ----------------------------------------------------------------------------------
def test_references_are_the_official_variants() -> None:
    assert SPACE.references() == ("s", "xs", "xxs")
    xs = SPACE.reference("xs")
    assert xs.widths == (48, 96, 240, 384) and xs.depths == (1, 1, 3, 1)
    assert [b.heads for stage in xs.stages for b in stage.blocks] == [1, 2, 5, 5, 5, 8]
    assert SPACE.reference("xxs").stages[2].blocks[0].heads == 4
    assert all(b.expansion == 4 for name in SPACE.references() for s in SPACE.reference(name).stages for b in s.blocks)


@pytest.mark.parametrize("variant", sorted(REFERENCE_COUNTS))
def test_reference_params_and_macs_match_reference_md(variant: str) -> None:
    arch = SPACE.reference(variant)
    params, macs = REFERENCE_COUNTS[variant]
    assert arch.resolution == SPACE.default_resolution == 224
    assert count_params(arch) == pytest.approx(params, rel=0.005)
    assert count_macs(arch) == pytest.approx(macs, rel=0.03)


@pytest.mark.parametrize("variant", sorted(REFERENCE_COUNTS))
def test_reference_count_equals_built_model(variant: str) -> None:
    arch = SPACE.reference(variant)
    assert count_params(arch) == _param_count(build_model(arch))


def test_each_spec_cost_params_equal_its_built_module() -> None:
    rng = np.random.default_rng(7)
    archs = [SPACE.reference(name) for name in SPACE.references()]
    archs += [SPACE.largest(), SPACE.smallest()] + [SPACE.sample(rng) for _ in range(10)]
    specs = specs_by_key(spec for arch in archs for spec in SPACE.layer_specs(arch))
    assert {spec.kind for spec in specs.values()} == {"edgevit.stem", "edgevit.downsample", "lgl", "edgevit.head"}
    for key, spec in specs.items():
        assert layer_cost(spec).params == _param_count(build_layer(spec)), key


def test_lgl_cost_counts_the_attention_over_sampled_tokens_only() -> None:
    spec = LayerSpec("lgl", 48, 48, (56, 56), expansion=4, heads=1, options=(("sr", 4),))
    sampled = 14 * 14  # one token per 4x4 window of the 56x56 map
    assert layer_cost(spec).op("matmul").macs == 2 * sampled * sampled * 48
    plain = dataclasses.replace(spec, input_size=(14, 14), options=(("sr", 1),))
    assert layer_cost(plain).op("matmul").macs == 2 * sampled * sampled * 48


# -- rules ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("arch", "path"),
    [
        (_small_arch(resolution=240), "resolution"),
        (_small_arch({0: _stage(40, _lgl(1))}), "stages[0].width"),
        (_small_arch({0: _stage(36, _lgl(1), _lgl(1), _lgl(1))}), "stages[0].blocks"),
        (_small_arch({1: _stage(72, Block("ffn", 4))}), "stages[1].blocks[0].type"),
        (_small_arch({1: _stage(72, _lgl(2), _lgl(2, expansion=5))}), "stages[1].blocks[1].expansion"),
        (_small_arch({2: _stage(144, Block("lgl", 4))}), "stages[2].blocks[0].heads"),
        (_small_arch({2: _stage(144, _lgl(3))}), "stages[2].blocks[0].heads"),
        # 152 splits into 4 heads but not into 5: the stage's heads choices are filtered by width.
        (_small_arch({2: _stage(152, _lgl(4), _lgl(5))}), "stages[2].blocks[1].heads"),
        (_small_arch({3: _stage(288, Block("identity"), *[_lgl(8)] * 4)}), "stages[3].blocks"),  # 5 slots > 4
    ],
)
def test_rules_name_the_offending_field(arch: Architecture, path: str) -> None:
    with pytest.raises(ArchitectureError) as error:
        SPACE.validate(arch)
    assert error.value.path == path


def test_extremes_and_samples_are_valid() -> None:
    largest = SPACE.validate(SPACE.largest())
    assert largest.widths == (48, 96, 240, 384) and largest.depths == (2, 3, 6, 4)
    assert [stage.blocks[0].heads for stage in largest.stages] == [1, 2, 5, 8]
    smallest = SPACE.validate(SPACE.smallest())
    assert smallest.widths == (36, 72, 144, 288) and smallest.depths == (1, 1, 1, 1)
    for seed in range(50):
        SPACE.validate(SPACE.sample(np.random.default_rng(seed)))


# -- layer specs and shapes ----------------------------------------------------------------------
def test_layer_specs_walk_strides_sample_ratios_and_slots() -> None:
    arch = _small_arch({2: _stage(144, _lgl(4), Block("identity"), _lgl(4, expansion=2))})
    specs = SPACE.layer_specs(arch)
    assert [spec.where for spec in specs] == [
        "stem",
        "stages.0.blocks.0",
        "stages.1.downsample",
        "stages.1.blocks.0",
        "stages.2.downsample",
        "stages.2.blocks.0",
        "stages.2.blocks.2",
        "stages.3.downsample",
        "stages.3.blocks.0",
        "head",
    ]
    blocks = [spec for spec in specs if spec.kind == "lgl"]
    assert [spec.option("sr") for spec in blocks] == [4, 2, 2, 2, 1]
    assert [spec.input_size for spec in blocks] == [(56, 56), (28, 28), (14, 14), (14, 14), (7, 7)]
    assert blocks[2].key() == "lgl:c144-144:hw14x14:s1:e4:h4:sr=2"
    stem, head = specs[0], specs[-1]
    assert (stem.in_channels, stem.out_channels, stem.stride, stem.input_size) == (3, 36, 4, (224, 224))
    assert (head.in_channels, head.out_channels, head.input_size) == (288, 1000, (7, 7))
    downsample = specs[2]
    assert (downsample.in_channels, downsample.out_channels, downsample.stride) == (36, 72, 2)


def test_local_aggregation_and_propagation_exist_only_where_sample_ratio_above_one() -> None:
    sparse = LGLBlock(STATIC_OPS, 96, heads=2, expansion=4, sample_ratio=2)
    plain = LGLBlock(STATIC_OPS, 96, heads=2, expansion=4, sample_ratio=1)
    assert not isinstance(sparse.local, nn.Identity) and isinstance(plain.local, nn.Identity)
    assert hasattr(sparse.attention.attention, "local_propagation")
    assert not hasattr(plain.attention.attention, "local_propagation")
    propagation = sparse.attention.attention.local_propagation
    assert isinstance(propagation, nn.ConvTranspose2d) and propagation.groups == 96
    assert propagation.kernel_size == (2, 2) and propagation.stride == (2, 2)


@pytest.mark.parametrize("sample_ratio", [1, 2, 4])
def test_lgl_block_keeps_the_shape(sample_ratio: int) -> None:
    block = LGLBlock(STATIC_OPS, 48, heads=2, expansion=2, sample_ratio=sample_ratio).eval()
    x = torch.randn(2, 48, 8, 8)
    with torch.no_grad():
        assert block(x).shape == x.shape


def test_sparse_attention_reads_one_token_per_window() -> None:
    torch.manual_seed(0)
    attention = GlobalSparseAttention(STATIC_OPS, 32, heads=4, sample_ratio=2).eval()
    tokens = torch.randn(1, 8 * 8, 32)
    perturbed = tokens.clone().reshape(1, 8, 8, 32)
    perturbed[:, 1::2, :, :] += 1.0  # rows the stride-2 sampler skips
    perturbed[:, :, 1::2, :] += 1.0  # columns it skips
    with torch.no_grad():
        reference = attention(tokens, 8, 8)
        assert reference.shape == tokens.shape
        assert torch.allclose(attention(perturbed.reshape(1, 64, 32), 8, 8), reference)
        kept = tokens.clone()
        kept[:, 0] += 1.0  # the top-left token of the first window is sampled
        assert not torch.allclose(attention(kept, 8, 8), reference)


def test_plain_attention_is_multi_head_self_attention() -> None:
    torch.manual_seed(0)
    attention = GlobalSparseAttention(STATIC_OPS, 32, heads=4, sample_ratio=1).eval()
    tokens = torch.randn(2, 16, 32)
    query, key, value = attention.qkv(tokens).chunk(3, dim=-1)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(2, 16, 4, 8).transpose(1, 2)

    mixed = torch.nn.functional.scaled_dot_product_attention(heads(query), heads(key), heads(value))
    expected = attention.proj(mixed.transpose(1, 2).reshape(2, 16, 32))
    with torch.no_grad():
        assert torch.allclose(attention(tokens, 4, 4), expected, atol=1e-5)


def test_sample_with_identity_gap_runs_at_64() -> None:
    arch = _small_arch(
        {
            1: _stage(84, Block("identity"), _lgl(2, expansion=3)),
            2: _stage(152, _lgl(4), Block("identity"), _lgl(4, expansion=2)),
        },
        resolution=64,
    )
    model = build_model(arch).eval()
    assert isinstance(model.stages[1].blocks[0], nn.Identity) and isinstance(model.stages[2].blocks[1], nn.Identity)
    assert count_params(arch) == _param_count(model)
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()
