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
from typing import Any

import numpy as np
import torch
from torch import nn

from search_spaces.architecture import Architecture, ArchitectureError, Block, Stage
from search_spaces.layers import (
    LayerKind,
    LayerSpec,
    register_layer_kind,
)
from search_spaces.ops import Ops
from search_spaces.registry import register_block_type, register_space
from search_spaces.space import (
    BlockType,
    LayerWalk,
    SearchSpace,
    StageChoices,
    width_range,
)

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
# Layer kinds: builders (their costs come from a trace of the module, search_spaces.tracing)
# ---------------------------------------------------------------------------------------------
def _flag(spec: LayerSpec, name: str) -> bool:
    return bool(spec.option(name, False))


def build_meta4d(spec: LayerSpec, ops: Ops) -> nn.Module:
    return Meta4DBlock(ops, spec.in_channels, spec.expansion)


def build_meta3d(spec: LayerSpec, ops: Ops) -> nn.Module:
    return Meta3DBlock(ops, spec.in_channels, spec.expansion, spec.input_size, _flag(spec, "to_tokens"))


def build_stem(spec: LayerSpec, ops: Ops) -> nn.Module:
    return Stem(ops, spec.in_channels, spec.out_channels)


def build_downsample(spec: LayerSpec, ops: Ops) -> nn.Module:
    return Downsample(ops, spec.in_channels, spec.out_channels, spec.input_size, _flag(spec, "from_tokens"))


def build_head(spec: LayerSpec, ops: Ops) -> nn.Module:
    return ClassifierHead(ops, spec.in_channels, spec.out_channels, _flag(spec, "from_tokens"))


LAYER_KINDS = (
    LayerKind(META4D, build_meta4d),
    LayerKind(META3D, build_meta3d),
    LayerKind(STEM_KIND, build_stem),
    LayerKind(DOWNSAMPLE_KIND, build_downsample),
    LayerKind(HEAD_KIND, build_head),
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

    # The tensor between layers is an NCHW map until the first meta3d turns it into tokens; the
    # downsample always returns a map. Layers whose input layout varies say it in their options.
    def downsample_options(self, stage_index: int, walk: LayerWalk) -> tuple[tuple[str, Any], ...]:
        return (("from_tokens", walk.tokens),)

    def block_options(self, stage_index: int, block: Block, walk: LayerWalk) -> tuple[tuple[str, Any], ...]:
        if block.type != META3D:
            return ()
        options = (("to_tokens", not walk.tokens),)
        walk.tokens = True
        return options

    def head_options(self, walk: LayerWalk) -> tuple[tuple[str, Any], ...]:
        return (("from_tokens", walk.tokens),)


for _kind in LAYER_KINDS:
    register_layer_kind(_kind)
for _block_type in BLOCK_TYPES.values():
    register_block_type(_block_type)
EFFICIENTFORMER_V1 = register_space(EfficientFormerV1Space())
