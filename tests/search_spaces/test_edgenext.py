"""EdgeNeXt space: reference counts, analytic costs vs built modules, family rules and block shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

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
from search_spaces.families.edgenext import (
    CONV_ENCODER,
    SDTA,
    ConvEncoder,
    FourierPositionalEncoding,
    SDTAEncoder,
)
from search_spaces.architecture import IDENTITY_BLOCK
from search_spaces.layers import LayerSpec, specs_by_key
from search_spaces.ops import Ops

SPACE = get_space("edgenext")

# REFERENCE.md (official mmaaz60/EdgeNeXt models/model.py), input 256x256
REFERENCE_PARAMS = {"xxs": 1.33e6, "xs": 2.34e6, "s": 5.59e6}
REFERENCE_MACS = {"xxs": 0.261e9, "xs": 0.538e9, "s": 1.261e9}
REFERENCE_WIDTHS = {"xxs": (24, 48, 88, 168), "xs": (32, 64, 100, 192), "s": (48, 96, 160, 304)}
REFERENCE_DEPTHS = {"xxs": (2, 2, 6, 2), "xs": (3, 3, 9, 3), "s": (3, 3, 9, 3)}
REFERENCE_HEADS = {"xxs": 4, "xs": 4, "s": 8}


def module_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def run_eval(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def stages_with(arch: Architecture, index: int, blocks: list[Block], width: int | None = None) -> Architecture:
    stage = arch.stages[index]
    return arch.replace_stage(index, Stage(stage.width if width is None else width, tuple(blocks)))


# -- references --------------------------------------------------------------------------------
def test_references_are_the_three_official_variants() -> None:
    assert set(SPACE.references()) == {"xxs", "xs", "s"}


@pytest.mark.parametrize("variant", ["xxs", "xs", "s"])
def test_reference_layout_is_official(variant: str) -> None:
    arch = SPACE.reference(variant)
    assert arch.resolution == 256 and arch.num_classes == 1000
    assert arch.widths == REFERENCE_WIDTHS[variant]
    assert arch.depths == REFERENCE_DEPTHS[variant]
    for index, stage in enumerate(arch.stages):
        types = [block.type for block in stage.blocks]
        expected_sdta = 1 if index > 0 else 0
        assert types == [CONV_ENCODER] * (len(types) - expected_sdta) + [SDTA] * expected_sdta
        assert all(block.expansion == 4 for block in stage.blocks)
        assert all(block.heads == REFERENCE_HEADS[variant] for block in stage.blocks if block.type == SDTA)


@pytest.mark.parametrize("variant", ["xxs", "xs", "s"])
def test_reference_params_and_macs_match_published(variant: str) -> None:
    arch = SPACE.reference(variant)
    assert count_params(arch) == pytest.approx(REFERENCE_PARAMS[variant], rel=0.005)
    assert count_macs(arch) == pytest.approx(REFERENCE_MACS[variant], rel=0.03)


@pytest.mark.parametrize("variant", ["xxs", "xs", "s"])
def test_reference_count_equals_built_model(variant: str) -> None:
    arch = SPACE.reference(variant)
    assert count_params(arch) == module_params(build_model(arch))


def test_largest_is_edgenext_s_layout_and_smallest_is_valid() -> None:
    largest = SPACE.largest()
    assert largest.widths == (48, 96, 160, 304)
    assert largest.depths == (3, 3, 9, 3)
    assert [stage.blocks[-1].type for stage in largest.stages] == [CONV_ENCODER, SDTA, SDTA, SDTA]
    assert all(block.expansion == 4 for stage in largest.stages for block in stage.blocks)
    # the official S variant is exactly the largest network of the space
    assert largest == SPACE.reference("s")
    smallest = SPACE.validate(SPACE.smallest())
    assert smallest.widths == (24, 48, 88, 168) and smallest.depths == (1, 1, 1, 1)


def test_layer_cost_params_equal_built_modules() -> None:
    archs = [SPACE.reference(name) for name in SPACE.references()]
    archs += [SPACE.largest(), SPACE.smallest()]
    archs += [SPACE.sample(np.random.default_rng(seed)) for seed in range(10)]
    specs = specs_by_key(spec for arch in archs for spec in SPACE.layer_specs(arch))
    kinds = {spec.kind for spec in specs.values()}
    assert kinds >= {CONV_ENCODER, SDTA, "edgenext.stem", "edgenext.downsample", "edgenext.head"}
    for key, spec in specs.items():
        assert layer_cost(spec).params == module_params(build_layer(spec)), key


# -- layer specs ---------------------------------------------------------------------------------
def test_layer_specs_carry_stage_options_and_places() -> None:
    specs = SPACE.layer_specs(SPACE.reference("xs"))
    assert [spec.where for spec in specs[:2]] == ["stem", "stages.0.blocks.0"]
    assert specs[0].input_size == (256, 256) and specs[0].stride == 4
    assert specs[-1].where == "head" and specs[-1].out_channels == 1000 and specs[-1].input_size == (8, 8)
    assert not any(spec.where == "stages.0.downsample" for spec in specs)
    by_where = {spec.where: spec for spec in specs}
    assert by_where["stages.2.downsample"].input_size == (32, 32)
    assert (by_where["stages.2.downsample"].in_channels, by_where["stages.2.downsample"].out_channels) == (64, 100)
    for stage, kernel in enumerate((3, 5, 7, 9)):
        assert by_where[f"stages.{stage}.blocks.0"].option("kernel") == kernel
        assert by_where[f"stages.{stage}.blocks.0"].heads is None
    for stage, scales in ((1, 2), (2, 3), (3, 4)):
        sdta = by_where[f"stages.{stage}.blocks.{2 if stage != 2 else 8}"]
        assert sdta.kind == SDTA and sdta.heads == 4 and sdta.option("scales") == scales
        # the Fourier positional encoding lives in stage 2's SDTA only
        assert sdta.option("pos_encoding") is (stage == 1)


def test_positional_encoding_costs_its_projection() -> None:
    def stage_two_sdta(pos_encoding: bool) -> LayerSpec:
        options = (("scales", 2), ("pos_encoding", pos_encoding))
        return LayerSpec(SDTA, 64, 64, (32, 32), expansion=4, heads=4, options=options)

    with_encoding, without = stage_two_sdta(True), stage_two_sdta(False)
    assert with_encoding.key() != without.key()
    # 64 Fourier channels projected to 64 by a 1x1 conv with bias, over 32x32 positions
    assert layer_cost(with_encoding).params - layer_cost(without).params == 64 * 64 + 64
    assert layer_cost(with_encoding).macs - layer_cost(without).macs == 64 * 64 * 32 * 32


def test_xca_cost_is_linear_in_tokens() -> None:
    def attention_macs(size: int) -> int:
        options = (("scales", 3), ("pos_encoding", False))
        spec = LayerSpec(SDTA, 96, 96, (size, size), expansion=4, heads=8, options=options)
        return layer_cost(spec).op("matmul").macs

    # two (C/h x C/h) x N products per head: 2 * N * C^2 / h
    assert attention_macs(8) == 2 * 64 * 96 * 96 // 8
    assert attention_macs(16) == 4 * attention_macs(8)


# -- family rules ----------------------------------------------------------------------------------
def _reference_xxs_with(index: int, blocks: list[Block], width: int | None = None) -> Architecture:
    return stages_with(SPACE.reference("xxs"), index, blocks, width)


@pytest.mark.parametrize(
    ("arch_factory", "path"),
    [
        # stage 1 holds conv encoders only
        (lambda: _reference_xxs_with(0, [Block(CONV_ENCODER, 4), Block(SDTA, 4, 4)]), "stages[0].blocks[1].type"),
        # 92 channels cannot split into 8 XCA heads
        (
            lambda: _reference_xxs_with(2, [Block(CONV_ENCODER, 4), Block(SDTA, 4, 8)], width=92),
            "stages[2].blocks[1].heads",
        ),
        (lambda: _reference_xxs_with(3, [Block(SDTA, 4)]), "stages[3].blocks[0].heads"),
        (lambda: _reference_xxs_with(1, [Block(CONV_ENCODER, 4, 4)]), "stages[1].blocks[0].heads"),
        (lambda: _reference_xxs_with(1, [Block(SDTA, None, 4)]), "stages[1].blocks[0].expansion"),
        (lambda: _reference_xxs_with(2, [Block(CONV_ENCODER, 6)]), "stages[2].blocks[0].expansion"),
        (lambda: _reference_xxs_with(3, [Block(SDTA, 4, 2)]), "stages[3].blocks[0].heads"),
        (lambda: _reference_xxs_with(1, [Block(CONV_ENCODER, 4)], width=56), "stages[1].width"),
        (lambda: _reference_xxs_with(2, [Block(CONV_ENCODER, 4)] * 10), "stages[2].blocks"),
        # four slots in a stage of three (identity slots count: they are supernet slots)
        (lambda: _reference_xxs_with(3, [IDENTITY_BLOCK] * 2 + [Block(SDTA, 4, 4)] * 2), "stages[3].blocks"),
    ],
)
def test_family_rules_name_the_field(arch_factory, path: str) -> None:
    with pytest.raises(ArchitectureError) as caught:
        SPACE.validate(arch_factory())
    assert caught.value.path == path


def test_sdta_is_allowed_anywhere_in_stages_two_to_four() -> None:
    arch = _reference_xxs_with(2, [Block(SDTA, 2, 8), Block(CONV_ENCODER, 3), Block(SDTA, 4, 4)], width=96)
    assert SPACE.contains(arch)


# -- shapes and forward behaviour -----------------------------------------------------------------
def test_identity_gaps_keep_slot_indices_and_run() -> None:
    arch = SPACE.sample(np.random.default_rng(7), resolution=64)
    arch = stages_with(arch, 1, [Block(CONV_ENCODER, 2), IDENTITY_BLOCK, Block(SDTA, 3, 4)], width=64)
    stage_three = [IDENTITY_BLOCK, Block(SDTA, 4, 8), IDENTITY_BLOCK, Block(CONV_ENCODER, 4)]
    arch = stages_with(arch, 2, stage_three, width=120)
    SPACE.validate(arch)
    places = {spec.where for spec in SPACE.layer_specs(arch)}
    assert {"stages.1.blocks.2", "stages.2.blocks.1", "stages.2.blocks.3"} <= places
    assert not places & {"stages.1.blocks.1", "stages.2.blocks.0", "stages.2.blocks.2"}
    model = build_model(arch)
    assert isinstance(model.stages[2].blocks[0], nn.Identity)
    assert isinstance(model.stages[2].blocks[1], SDTAEncoder)
    logits = run_eval(model, torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()


@pytest.mark.parametrize(("channels", "scales"), [(48, 2), (100, 3), (88, 3), (168, 4), (64, 1)])
def test_sdta_keeps_shape_with_uneven_splits(channels: int, scales: int) -> None:
    block = SDTAEncoder(Ops(), channels, expansion=2, heads=4, scales=scales, positional_encoding=scales == 2)
    # the official split: scales - 1 depthwise convs of ceil(C / scales) channels (one when scales is 1)
    assert len(block.split_convs) == max(scales - 1, 1)
    assert all(conv.in_channels == math.ceil(channels / scales) for conv in block.split_convs)
    x = torch.randn(2, channels, 5, 7)
    y = run_eval(block, x)
    assert y.shape == x.shape and torch.isfinite(y).all()


@pytest.mark.parametrize("kernel", [3, 5, 7, 9])
def test_conv_encoder_keeps_shape(kernel: int) -> None:
    block = ConvEncoder(Ops(), 32, expansion=3, kernel_size=kernel)
    assert block.dwconv.kernel_size == (kernel, kernel) and block.dwconv.groups == 32
    x = torch.randn(2, 32, 6, 6)
    assert run_eval(block, x).shape == x.shape


def test_fourier_encoding_depends_on_grid_only() -> None:
    encoding = FourierPositionalEncoding(Ops(), 48)
    features = encoding.fourier_features(4, 6, torch.device("cpu"))
    assert features.shape == (1, 64, 4, 6)
    # channel 0 is sin(2π y / H): zero at the last row; channel 32 sin(2π x / W): zero at the last column
    assert torch.allclose(features[0, 0, -1], torch.zeros(6), atol=1e-4)
    assert torch.allclose(features[0, 32, :, -1], torch.zeros(4), atol=1e-4)
    out = run_eval(encoding, torch.randn(3, 48, 4, 6))
    assert out.shape == (1, 48, 4, 6)


def test_layer_scales_start_at_official_value() -> None:
    spec = next(spec for spec in SPACE.layer_specs(SPACE.reference("xxs")) if spec.where == "stages.1.blocks.1")
    block = build_layer(spec)
    assert isinstance(block, SDTAEncoder)
    for scale in (block.attention_scale, block.mlp_scale):
        assert torch.all(scale.weight == 1e-6)
    assert block.attention.temperature.shape == (4, 1, 1)


# -- elastic-style execution: channel counts come from the input tensor -------------------------
class _PrefixLinear(nn.Linear):
    """Runs the prefix of its weight; output width keeps the max layer's out/in ratio."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        active_in = x.shape[-1]
        active_out = active_in * self.out_features // self.in_features
        return F.linear(x, self.weight[:active_out, :active_in], self.bias[:active_out])


class _PrefixChannelLinear(nn.Linear):
    """`_PrefixLinear` over the channels of an NCHW map (as `Ops.channel_linear`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        active_in = x.shape[1]
        active_out = active_in * self.out_features // self.in_features
        weight = self.weight[:active_out, :active_in]
        return F.conv2d(x, weight[:, :, None, None], self.bias[:active_out])


class _PrefixDepthwise(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        return F.conv2d(x, self.weight[:channels], self.bias[:channels], self.stride, self.padding, groups=channels)


class _PrefixLayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[-1]
        return F.layer_norm(x, (channels,), self.weight[:channels], self.bias[:channels], self.eps)


class _PrefixOps(Ops):
    """A toy elastic factory: max-size weights, prefix slices chosen from the input width."""

    def depthwise_conv2d(self, channels, kernel_size, stride=1, padding=0, bias=True):
        return _PrefixDepthwise(channels, channels, kernel_size, stride, padding, groups=channels, bias=bias)

    def linear(self, in_features, out_features, bias=True, output_chunks=1):
        return _PrefixLinear(in_features, out_features, bias=bias)  # plain prefix: consistent with _copy_prefix

    def channel_linear(self, in_features, out_features, bias=True):
        return _PrefixChannelLinear(in_features, out_features, bias=bias)

    def layer_norm(self, num_features, eps=1e-5):
        return _PrefixLayerNorm(num_features, eps=eps)


def _copy_prefix(source: nn.Module, target: nn.Module) -> None:
    with torch.no_grad():
        for (_, small), (_, big) in zip(target.named_parameters(), source.named_parameters()):
            small.copy_(big[tuple(slice(0, size) for size in small.shape)])


@pytest.mark.parametrize(
    "make_block",
    [
        lambda ops, channels: ConvEncoder(ops, channels, expansion=3, kernel_size=5),
        lambda ops, channels: SDTAEncoder(ops, channels, expansion=2, heads=4, scales=3, positional_encoding=False),
        lambda ops, channels: SDTAEncoder(ops, channels, expansion=4, heads=8, scales=2, positional_encoding=True),
    ],
)
def test_blocks_read_widths_from_the_input(make_block) -> None:
    torch.manual_seed(0)
    big = make_block(_PrefixOps(), 96)
    for parameter in big.parameters():  # away from the init so every weight matters
        nn.init.normal_(parameter, std=0.3)
    small = make_block(Ops(), 64)
    _copy_prefix(big, small)
    x = torch.randn(2, 64, 5, 5)
    assert torch.allclose(run_eval(big, x), run_eval(small, x), atol=1e-5)
