"""EfficientFormer (V1) block family and the `efficientformer_v1` search space.

Paper: Li et al., "EfficientFormer: Vision Transformers at MobileNet Speed", NeurIPS 2022.
Official code: https://github.com/snap-research/EfficientFormer (models/efficientformer.py).

The network is dimension-consistent: it runs on 4D (NCHW) tensors through `meta4d` blocks
(pooling token mixer + conv MLP) and switches once to tokens (B, N, C) before its first `meta3d`
block (multi-head self-attention + linear MLP); every `meta3d` block therefore comes after every
`meta4d` block. Layout changes live inside the layers that need them and are named in their specs:
the first `meta3d` flattens its 4D input (`to_tokens`), a downsample that receives tokens restores
4D first (`from_tokens`), and the head normalises tokens with LayerNorm, flattening a 4D map first
when the network has no `meta3d` (`from_tokens` false).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn

from search_spaces.architecture import Architecture, ArchitectureError, Block, Stage
from search_spaces.layers import LayerCost, LayerKind, LayerSpec, OpTally, register_layer_kind
from search_spaces.ops import Ops
from search_spaces.registry import register_block_type, register_space
from search_spaces.space import BlockType, SearchSpace, StageChoices, width_range

SPACE_NAME = "efficientformer_v1"
META4D = "meta4d"
META3D = "meta3d"
STEM_KIND = f"{SPACE_NAME}.stem"
DOWNSAMPLE_KIND = f"{SPACE_NAME}.downsample"
HEAD_KIND = f"{SPACE_NAME}.head"

# Attention shape of every `meta3d` block (official `Attention` defaults, fixed in the V1 search):
ATTENTION_HEADS = 8
ATTENTION_KEY_DIM = 32
ATTENTION_RATIO = 4  # value dim per head = 4 x key dim = 128, 1024 over all heads
ATTENTION_VALUE_DIM = ATTENTION_RATIO * ATTENTION_KEY_DIM
# q, k and v of all heads come out of one linear layer
ATTENTION_QKV_DIM = ATTENTION_HEADS * (2 * ATTENTION_KEY_DIM + ATTENTION_VALUE_DIM)

POOL_SIZE = 3  # PoolFormer token mixer: 3x3 average pool, stride 1
LAYER_SCALE_INIT = 1e-5  # official layer_scale_init_value: residual branches start nearly closed
STEM_STRIDE = 4  # two stride-2 convolutions
DOWNSAMPLE_KERNEL = 3  # official Embedding: conv3x3, stride 2, padding 1
STEM_KERNEL = 3


# ---------------------------------------------------------------------------------------------
# Block classes, small to large
# ---------------------------------------------------------------------------------------------
class PoolingMixer(nn.Module):
    """PoolFormer token mixer: 3x3 average pool (padding excluded from the mean) minus the input."""

    def __init__(self, pool_size: int = POOL_SIZE) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(pool_size, stride=1, padding=pool_size // 2, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) - x


class ConvMlp(nn.Module):
    """MLP of a `meta4d` block on NCHW maps: conv1x1 -> BN -> GELU -> conv1x1 -> BN."""

    def __init__(self, ops: Ops, channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.fc1 = ops.conv2d(channels, hidden_channels, 1)
        self.norm1 = ops.batch_norm2d(hidden_channels)
        self.act = nn.GELU()
        self.fc2 = ops.conv2d(hidden_channels, channels, 1)
        self.norm2 = ops.batch_norm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.fc2(self.act(self.norm1(self.fc1(x)))))


class LinearMlp(nn.Module):
    """MLP of a `meta3d` block on tokens: linear -> GELU -> linear."""

    def __init__(self, ops: Ops, channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.fc1 = ops.linear(channels, hidden_channels)
        self.act = nn.GELU()
        self.fc2 = ops.linear(hidden_channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def relative_offset_index(grid: tuple[int, int]) -> tuple[int, torch.Tensor]:
    """Bias-table size and (N, N) index of the table entry of every token pair on `grid`.

    Pairs share an entry when their absolute row and column offsets match (LeViT biases), so a
    grid of H x W tokens has H * W distinct entries.
    """
    height, width = grid
    points = list(itertools.product(range(height), range(width)))
    offsets: dict[tuple[int, int], int] = {}
    indices = []
    for first in points:
        for second in points:
            offset = (abs(first[0] - second[0]), abs(first[1] - second[1]))
            indices.append(offsets.setdefault(offset, len(offsets)))
    return len(offsets), torch.tensor(indices, dtype=torch.long).view(len(points), len(points))


class Attention(nn.Module):
    """Multi-head self-attention on (B, N, C) tokens with learned relative-position biases.

    Head count, key dim and value dim are fixed (8, 32, 128); only the token width C varies, so
    the bias table (heads x offsets of `grid`) is plain torch. `grid` is the token grid (H, W).
    """

    def __init__(
        self,
        ops: Ops,
        channels: int,
        grid: tuple[int, int],
        heads: int = ATTENTION_HEADS,
        key_dim: int = ATTENTION_KEY_DIM,
        attn_ratio: int = ATTENTION_RATIO,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.key_dim = key_dim
        self.value_dim = attn_ratio * key_dim
        self.scale = key_dim**-0.5
        self.qkv = ops.linear(channels, heads * (2 * key_dim + self.value_dim))
        self.proj = ops.linear(heads * self.value_dim, channels)
        table_size, index = relative_offset_index(grid)
        self.attention_biases = nn.Parameter(torch.zeros(heads, table_size))
        # derived from `grid`, so rebuilt rather than saved
        self.register_buffer("attention_bias_idxs", index, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        q, k, v = (
            self.qkv(x)
            .reshape(batch, tokens, self.heads, -1)
            .permute(0, 2, 1, 3)
            .split([self.key_dim, self.key_dim, self.value_dim], dim=3)
        )
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.attention_biases[:, self.attention_bias_idxs]
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(batch, tokens, self.heads * self.value_dim)
        return self.proj(x)


class Meta4DBlock(nn.Module):
    """`meta4d`: x + γ1·(pool(x) - x), then x + γ2·ConvMlp(x), on NCHW maps of any width."""

    def __init__(self, ops: Ops, channels: int, expansion: int) -> None:
        super().__init__()
        self.token_mixer = PoolingMixer()
        self.layer_scale_1 = ops.layer_scale(channels, LAYER_SCALE_INIT, channel_dim=1)
        self.mlp = ConvMlp(ops, channels, expansion * channels)
        self.layer_scale_2 = ops.layer_scale(channels, LAYER_SCALE_INIT, channel_dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale_1(self.token_mixer(x))
        return x + self.layer_scale_2(self.mlp(x))


class Meta3DBlock(nn.Module):
    """`meta3d`: x + γ1·Attention(LN(x)), then x + γ2·LinearMlp(LN(x)), on (B, N, C) tokens.

    With `to_tokens` the block takes an NCHW map and flattens it first (the network's switch to
    tokens); otherwise it takes tokens. It always returns tokens. `grid` is the (H, W) token grid.
    """

    def __init__(self, ops: Ops, channels: int, expansion: int, grid: tuple[int, int], to_tokens: bool) -> None:
        super().__init__()
        self.to_tokens = to_tokens
        self.norm1 = ops.layer_norm(channels)
        self.token_mixer = Attention(ops, channels, grid)
        self.layer_scale_1 = ops.layer_scale(channels, LAYER_SCALE_INIT, channel_dim=-1)
        self.norm2 = ops.layer_norm(channels)
        self.mlp = LinearMlp(ops, channels, expansion * channels)
        self.layer_scale_2 = ops.layer_scale(channels, LAYER_SCALE_INIT, channel_dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.to_tokens:
            x = x.flatten(2).transpose(1, 2)
        x = x + self.layer_scale_1(self.token_mixer(self.norm1(x)))
        return x + self.layer_scale_2(self.mlp(self.norm2(x)))


class Stem(nn.Module):
    """Two conv3x3 stride-2 + BN + ReLU layers: 3 -> C/2 -> C channels, 1/4 resolution."""

    def __init__(self, ops: Ops, in_channels: int, out_channels: int) -> None:
        super().__init__()
        hidden = out_channels // 2
        self.conv1 = ops.conv2d(in_channels, hidden, STEM_KERNEL, stride=2, padding=STEM_KERNEL // 2)
        self.norm1 = ops.batch_norm2d(hidden)
        self.conv2 = ops.conv2d(hidden, out_channels, STEM_KERNEL, stride=2, padding=STEM_KERNEL // 2)
        self.norm2 = ops.batch_norm2d(out_channels)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.conv1(x)))
        return self.act(self.norm2(self.conv2(x)))


class Downsample(nn.Module):
    """Between stages (official `Embedding`): conv3x3 stride 2 + BN, NCHW out.

    With `from_tokens` the input is (B, N, C) tokens on `grid` (the previous stage ended in
    `meta3d` blocks) and is restored to NCHW first.
    """

    def __init__(
        self, ops: Ops, in_channels: int, out_channels: int, grid: tuple[int, int], from_tokens: bool
    ) -> None:
        super().__init__()
        self.grid = tuple(grid)
        self.from_tokens = from_tokens
        self.conv = ops.conv2d(in_channels, out_channels, DOWNSAMPLE_KERNEL, stride=2, padding=DOWNSAMPLE_KERNEL // 2)
        self.norm = ops.batch_norm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.from_tokens:
            x = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *self.grid)
        return self.norm(self.conv(x))


class ClassifierHead(nn.Module):
    """LayerNorm -> global mean -> classifier and distillation linear heads; returns their mean logits.

    Tokens (`from_tokens`) are normalised directly, as the official model does. An NCHW map (a
    network without `meta3d`) is flattened to tokens first, so the head has the same weights in
    both layouts and one supernet head serves every architecture.
    The official model returns both heads while training; here the output is always their mean.
    """

    def __init__(self, ops: Ops, in_channels: int, num_classes: int, from_tokens: bool) -> None:
        super().__init__()
        self.from_tokens = from_tokens
        self.norm = ops.layer_norm(in_channels)
        self.head = ops.linear(in_channels, num_classes)
        self.dist_head = ops.linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.from_tokens:
            x = x.flatten(2).transpose(1, 2)
        pooled = self.norm(x).mean(1)
        return (self.head(pooled) + self.dist_head(pooled)) / 2


# ---------------------------------------------------------------------------------------------
# Layer kinds: builders and shape-only costs
# ---------------------------------------------------------------------------------------------
def _flag(spec: LayerSpec, name: str) -> bool:
    return bool(spec.option(name, False))


def _tokens(spec: LayerSpec) -> int:
    height, width = spec.input_size
    return height * width


def _conv_output_size(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """Output H, W of a conv with kernel 3, padding 1 and `stride` (ceil division)."""
    return (-(-size[0] // stride), -(-size[1] // stride))


def _tally_conv_bn(
    tally: OpTally, in_channels: int, out_channels: int, kernel: int, output_size: tuple[int, int]
) -> None:
    """A dense conv with bias followed by BatchNorm2d."""
    elements = out_channels * output_size[0] * output_size[1]
    tally.add(
        "conv",
        macs=elements * in_channels * kernel * kernel,
        elements=elements,
        params=out_channels * in_channels * kernel * kernel + out_channels,
    )
    tally.add("norm", elements=elements, params=2 * out_channels)


def _tally_residual(tally: OpTally, elements: int, channels: int) -> None:
    """A layer-scaled residual branch: γ·branch (γ has `channels` params), then x + that."""
    tally.add("elementwise", elements=elements, params=channels)
    tally.add("elementwise", elements=elements)


def _tally_linear(tally: OpTally, tokens: int, in_features: int, out_features: int) -> None:
    tally.add(
        "linear",
        macs=tokens * in_features * out_features,
        elements=tokens * out_features,
        params=in_features * out_features + out_features,
    )


def build_meta4d(spec: LayerSpec, ops: Ops) -> nn.Module:
    return Meta4DBlock(ops, spec.in_channels, spec.expansion)


def cost_meta4d(spec: LayerSpec) -> LayerCost:
    tally = OpTally()
    channels, hidden = spec.in_channels, spec.expansion * spec.in_channels
    elements = channels * _tokens(spec)
    tally.add("elementwise", elements=elements)  # average pool
    tally.add("elementwise", elements=elements)  # pool(x) - x
    _tally_residual(tally, elements, channels)
    _tally_conv_bn(tally, channels, hidden, 1, spec.input_size)
    tally.add("activation", elements=hidden * _tokens(spec))  # GELU
    _tally_conv_bn(tally, hidden, channels, 1, spec.input_size)
    _tally_residual(tally, elements, channels)
    return tally.cost()


def build_meta3d(spec: LayerSpec, ops: Ops) -> nn.Module:
    return Meta3DBlock(ops, spec.in_channels, spec.expansion, spec.input_size, _flag(spec, "to_tokens"))


def cost_meta3d(spec: LayerSpec) -> LayerCost:
    tally = OpTally()
    channels, hidden, tokens = spec.in_channels, spec.expansion * spec.in_channels, _tokens(spec)
    elements = channels * tokens
    if _flag(spec, "to_tokens"):
        tally.add("reshape", elements=elements)  # NCHW -> (B, N, C)
    # attention branch
    tally.add("norm", elements=elements, params=2 * channels)
    _tally_linear(tally, tokens, channels, ATTENTION_QKV_DIM)
    tally.add("reshape", elements=tokens * ATTENTION_QKV_DIM)  # split heads: (B, heads, N, dims)
    scores = ATTENTION_HEADS * tokens * tokens
    tally.add("matmul", macs=scores * ATTENTION_KEY_DIM, elements=scores)  # q @ k^T
    bias_table_size = tokens  # an H x W grid has H * W distinct (|dy|, |dx|) offsets
    tally.add("reshape", elements=scores, params=ATTENTION_HEADS * bias_table_size)  # gather the bias table
    tally.add("elementwise", elements=scores, calls=2)  # scale, + bias
    tally.add("activation", elements=scores)  # softmax
    values = ATTENTION_HEADS * ATTENTION_VALUE_DIM * tokens
    tally.add("matmul", macs=scores * ATTENTION_VALUE_DIM, elements=values)  # attn @ v
    tally.add("reshape", elements=values)  # merge heads: (B, N, heads * value_dim)
    _tally_linear(tally, tokens, ATTENTION_HEADS * ATTENTION_VALUE_DIM, channels)
    _tally_residual(tally, elements, channels)
    # MLP branch
    tally.add("norm", elements=elements, params=2 * channels)
    _tally_linear(tally, tokens, channels, hidden)
    tally.add("activation", elements=hidden * tokens)  # GELU
    _tally_linear(tally, tokens, hidden, channels)
    _tally_residual(tally, elements, channels)
    return tally.cost()


def build_stem(spec: LayerSpec, ops: Ops) -> nn.Module:
    return Stem(ops, spec.in_channels, spec.out_channels)


def cost_stem(spec: LayerSpec) -> LayerCost:
    tally = OpTally()
    hidden = spec.out_channels // 2
    half = _conv_output_size(spec.input_size, 2)
    quarter = _conv_output_size(half, 2)
    _tally_conv_bn(tally, spec.in_channels, hidden, STEM_KERNEL, half)
    tally.add("activation", elements=hidden * half[0] * half[1])  # ReLU
    _tally_conv_bn(tally, hidden, spec.out_channels, STEM_KERNEL, quarter)
    tally.add("activation", elements=spec.out_channels * quarter[0] * quarter[1])  # ReLU
    return tally.cost()


def build_downsample(spec: LayerSpec, ops: Ops) -> nn.Module:
    return Downsample(ops, spec.in_channels, spec.out_channels, spec.input_size, _flag(spec, "from_tokens"))


def cost_downsample(spec: LayerSpec) -> LayerCost:
    tally = OpTally()
    if _flag(spec, "from_tokens"):
        tally.add("reshape", elements=spec.in_channels * _tokens(spec))  # (B, N, C) -> NCHW
    _tally_conv_bn(
        tally, spec.in_channels, spec.out_channels, DOWNSAMPLE_KERNEL, _conv_output_size(spec.input_size, spec.stride)
    )
    return tally.cost()


def build_head(spec: LayerSpec, ops: Ops) -> nn.Module:
    return ClassifierHead(ops, spec.in_channels, spec.out_channels, _flag(spec, "from_tokens"))


def cost_head(spec: LayerSpec) -> LayerCost:
    tally = OpTally()
    channels, classes = spec.in_channels, spec.out_channels
    elements = channels * _tokens(spec)
    if not _flag(spec, "from_tokens"):
        tally.add("reshape", elements=elements)  # NCHW -> (B, N, C)
    tally.add("norm", elements=elements, params=2 * channels)  # LayerNorm over channels
    tally.add("elementwise", elements=elements)  # global mean
    _tally_linear(tally, 1, channels, classes)  # classifier
    _tally_linear(tally, 1, channels, classes)  # distillation head
    tally.add("elementwise", elements=classes, calls=2)  # (a + b) / 2
    return tally.cost()


LAYER_KINDS = (
    LayerKind(META4D, build_meta4d, cost_meta4d),
    LayerKind(META3D, build_meta3d, cost_meta3d),
    LayerKind(STEM_KIND, build_stem, cost_stem),
    LayerKind(DOWNSAMPLE_KIND, build_downsample, cost_downsample),
    LayerKind(HEAD_KIND, build_head, cost_head),
)
BLOCK_TYPES = {
    META4D: BlockType(META4D, has_expansion=True, summary="pool token mixer + conv1x1 MLP on 4D maps (EfficientFormer)"),
    META3D: BlockType(
        META3D, has_expansion=True, summary="MHSA (8 heads, rel-pos biases) + linear MLP on tokens (EfficientFormer)"
    ),
}


# ---------------------------------------------------------------------------------------------
# The search space
# ---------------------------------------------------------------------------------------------
class EfficientFormerV1Space(SearchSpace):
    """EfficientFormer V1: four stages of `meta4d` blocks, `meta3d` blocks last (stages 3-4).

    Rule: once a `meta3d` block has run, no `meta4d` block may follow (the network flattens to
    tokens once). Hence a stage 3 holding `meta3d` forces stage 4 to be all `meta3d`. The largest
    network has the L7 layout (stages 1-3 `meta4d`, stage 4 `meta3d`); samples draw a trailing run
    of `meta3d` blocks per stage and are repaired to respect the rule.
    """

    name = SPACE_NAME
    family = "efficientformer_v1"
    stages = (
        StageChoices(width_range(48, 96, 16), 6, (META4D,), expansions=(4,)),
        StageChoices(width_range(96, 192, 16), 6, (META4D,), expansions=(4,)),
        StageChoices(width_range(224, 384, 16), 18, (META4D, META3D), expansions=(4,)),
        StageChoices(width_range(448, 768, 16), 8, (META4D, META3D), expansions=(4,)),
    )
    block_types = BLOCK_TYPES
    default_resolution = 224
    summary = "EfficientFormer (Li et al., NeurIPS 2022): meta4d pool blocks, then meta3d attention blocks"

    def check_rules(self, arch: Architecture) -> None:
        seen_meta3d = None
        for stage_index, stage in enumerate(arch.stages):
            for slot, block in enumerate(stage.blocks):
                path = f"stages[{stage_index}].blocks[{slot}]"
                if block.type == META3D and seen_meta3d is None:
                    seen_meta3d = path
                elif block.type == META4D and seen_meta3d is not None:
                    raise ArchitectureError(
                        f"{path}.type",
                        f"meta4d cannot follow the meta3d block at {seen_meta3d}: EfficientFormer reshapes "
                        "to tokens once, before its first meta3d, so all meta3d blocks must come last",
                    )

    def largest_block_types(self, stage_index: int) -> tuple[str, ...]:
        stage = self.stages[stage_index]
        last = stage_index == len(self.stages) - 1
        return ((META3D if last else META4D),) * stage.max_depth

    def sample_block_types(self, rng: np.random.Generator, stage_index: int, depth: int) -> tuple[str, ...]:
        """`meta4d` blocks followed by a trailing run of `meta3d` blocks (where the stage allows them).

        Stage 4: the run length is uniform in 0..depth. Stage 3: no `meta3d` half of the time
        (every released V1 model keeps stage 3 in 4D, and attention at 1/16 resolution is the
        costliest choice of the space), otherwise a length uniform in 1..depth.
        """
        if META3D not in self.stages[stage_index].block_types:
            return (META4D,) * depth
        last = stage_index == len(self.stages) - 1
        if last:
            meta3d_count = int(rng.integers(0, depth + 1))
        elif int(rng.integers(0, 2)) == 0:
            meta3d_count = 0
        else:
            meta3d_count = int(rng.integers(1, depth + 1))
        return (META4D,) * (depth - meta3d_count) + (META3D,) * meta3d_count

    def repair_sample(self, arch: Architecture) -> Architecture:
        """Turn every `meta4d` after the first `meta3d` into `meta3d` (same expansion)."""
        seen_meta3d = False
        stages = []
        for stage in arch.stages:
            blocks = []
            for block in stage.blocks:
                seen_meta3d = seen_meta3d or block.type == META3D
                if seen_meta3d and block.type == META4D:
                    block = Block(META3D, block.expansion)
                blocks.append(block)
            stages.append(Stage(stage.width, tuple(blocks)))
        return Architecture(arch.space, arch.resolution, arch.num_classes, tuple(stages), arch.meta)

    def layer_specs(self, arch: Architecture) -> list[LayerSpec]:
        size = (arch.resolution, arch.resolution)
        first_width = arch.stages[0].width
        specs = [LayerSpec(STEM_KIND, 3, first_width, size, stride=STEM_STRIDE, where="stem")]
        size = _conv_output_size(_conv_output_size(size, 2), 2)
        tokens = False  # layout of the tensor flowing between layers: NCHW until the first meta3d
        channels = first_width
        for stage_index, stage in enumerate(arch.stages):
            if stage_index > 0:
                specs.append(
                    LayerSpec(
                        DOWNSAMPLE_KIND,
                        channels,
                        stage.width,
                        size,
                        stride=2,
                        options=(("from_tokens", tokens),),
                        where=f"stages.{stage_index}.downsample",
                    )
                )
                size = _conv_output_size(size, 2)
                tokens = False  # the downsample always returns an NCHW map
            channels = stage.width
            for slot, block in enumerate(stage.blocks):
                if block.is_identity:
                    continue
                options: tuple[tuple[str, bool], ...] = ()
                if block.type == META3D:
                    options = (("to_tokens", not tokens),)
                    tokens = True
                specs.append(
                    LayerSpec(
                        block.type,
                        channels,
                        channels,
                        size,
                        expansion=block.expansion,
                        options=options,
                        where=f"stages.{stage_index}.blocks.{slot}",
                    )
                )
        specs.append(
            LayerSpec(
                HEAD_KIND, channels, arch.num_classes, size, options=(("from_tokens", tokens),), where="head"
            )
        )
        return specs


for _kind in LAYER_KINDS:
    register_layer_kind(_kind)
for _block_type in BLOCK_TYPES.values():
    register_block_type(_block_type)
EFFICIENTFORMER_V1 = register_space(EfficientFormerV1Space())
