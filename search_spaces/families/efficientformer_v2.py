"""EfficientFormerV2 block family: local FFN and Attention4D + FFN blocks, as a search space.

Paper: Li et al., "Rethinking Vision Transformers for MobileNet Size and Speed" (ICCV 2023).
Official code: https://github.com/snap-research/EfficientFormer, `models/efficientformer_v2.py`.

The network is a 4D (NCHW) pyramid throughout: a two-conv stem to 1/4 resolution, four stages at
1/4 .. 1/32, stride-2 conv downsamples between them (the one into the last stage adds an attention
branch), and a BN -> mean -> linear head with a distillation twin. Stages 1-2 hold `ffn` blocks;
stages 3-4 hold `ffn` and `attn_ffn` blocks, the latter with strided attention in stage 3.

Layer kinds registered here: `ffn`, `attn_ffn`, `efficientformer_v2.stem`,
`efficientformer_v2.downsample`, `efficientformer_v2.head`; space: `efficientformer_v2`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.architecture import Block
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

SPACE_NAME = "efficientformer_v2"
STEM_KIND = f"{SPACE_NAME}.stem"
DOWNSAMPLE_KIND = f"{SPACE_NAME}.downsample"
HEAD_KIND = f"{SPACE_NAME}.head"

# Attention4D of the `attn_ffn` block: 8 heads of 32-dim queries/keys, values 4x wider (128/head).
ATTENTION_HEADS = 8
ATTENTION_KEY_DIM = 32
ATTENTION_RATIO = 4
# The attention branch of the S3->S4 downsample is lighter: 16-dim queries/keys, values 64/head.
DOWNSAMPLE_ATTENTION_HEADS = 8
DOWNSAMPLE_ATTENTION_KEY_DIM = 16
DOWNSAMPLE_ATTENTION_RATIO = 4
# Layer scale starts near zero so every block begins as (almost) the identity (official 1e-5).
LAYER_SCALE_INIT = 1e-5
# Depthwise kernel of the FFN's mid conv, the local-V branch and the strided/query convs.
LOCAL_KERNEL = 3
# Stage 3 (index 2) runs its attention at half resolution: 14x14 -> 7x7 at 224 input.
STRIDED_ATTENTION_STAGE = 2
# The downsample into stage 4 (index 3) adds the attention-downsampling branch (official `asub`).
ATTENTION_DOWNSAMPLE_STAGE = 3
# The stem and the downsamples together reduce the input 32x; the stem alone 4x.
STEM_STRIDE = 4
EXPANSIONS = (2, 3, 4)
# The largest network has V2-L's layout: its 6 attention blocks are the last slots of S3 and S4.
LARGEST_ATTENTION_BLOCKS = (0, 0, 6, 6)


# -- blocks, small to large -------------------------------------------------------------------
def _conv_norm(ops: Ops, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1) -> nn.Sequential:
    """Dense conv (with bias, "same" padding) followed by BatchNorm."""
    return nn.Sequential(
        ops.conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2),
        ops.batch_norm2d(out_channels),
    )


def _depthwise_norm(ops: Ops, channels: int, stride: int = 1) -> nn.Sequential:
    """Depthwise 3x3 conv (with bias) followed by BatchNorm."""
    return nn.Sequential(
        ops.depthwise_conv2d(channels, LOCAL_KERNEL, stride, LOCAL_KERNEL // 2),
        ops.batch_norm2d(channels),
    )


def _strided_size(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """Output size of a kernel-3 / padding-1 (or kernel-1 / padding-0) conv or pool of `stride`."""
    return (math.ceil(size[0] / stride), math.ceil(size[1] / stride))


def _offset_values(query_length: int, key_length: int, query_step: int) -> list[int]:
    """Distinct |query_step * i - j| along one axis, in first-seen order (official bias layout)."""
    seen: dict[int, int] = {}
    for i in range(query_length):
        for j in range(key_length):
            seen.setdefault(abs(query_step * i - j), len(seen))
    return list(seen)


def _bias_table_size(query_grid: tuple[int, int], key_grid: tuple[int, int], query_step: int) -> int:
    """Number of distinct (dy, dx) offsets between query and key positions: one bias per head each."""
    rows = len(_offset_values(query_grid[0], key_grid[0], query_step))
    cols = len(_offset_values(query_grid[1], key_grid[1], query_step))
    return rows * cols


def _bias_index(query_grid: tuple[int, int], key_grid: tuple[int, int], query_step: int) -> torch.Tensor:
    """(Nq, Nk) index into the bias table of each query/key pair, shared offsets sharing an entry.

    Query position (i, j) sits at (query_step*i, query_step*j) of the key grid; offsets are
    numbered in first-seen order over queries then keys, as the official code does.
    """
    offsets: dict[tuple[int, int], int] = {}
    index = []
    for qi in range(query_grid[0]):
        for qj in range(query_grid[1]):
            for ki in range(key_grid[0]):
                for kj in range(key_grid[1]):
                    offset = (abs(query_step * qi - ki), abs(query_step * qj - kj))
                    index.append(offsets.setdefault(offset, len(offsets)))
    return torch.tensor(index, dtype=torch.long).view(query_grid[0] * query_grid[1], key_grid[0] * key_grid[1])


class _AttentionBias(nn.Module):
    """Learned per-head bias of every query/key offset on a fixed attention grid.

    The table size depends on the grid, so the module is built for one input resolution; a tensor
    of another grid is refused rather than silently mis-indexed. Not width-dependent (heads fixed).
    """

    def __init__(self, heads: int, query_grid: tuple[int, int], key_grid: tuple[int, int], query_step: int = 1) -> None:
        super().__init__()
        self.query_grid = tuple(query_grid)
        self.key_grid = tuple(key_grid)
        self.biases = nn.Parameter(torch.zeros(heads, _bias_table_size(query_grid, key_grid, query_step)))
        # derived from the grid, so not part of the state dict (weights stay loadable across builds)
        self.register_buffer("index", _bias_index(query_grid, key_grid, query_step), persistent=False)

    def forward(self, query_grid: tuple[int, int], key_grid: tuple[int, int]) -> torch.Tensor:
        if tuple(query_grid) != self.query_grid or tuple(key_grid) != self.key_grid:
            raise ValueError(
                f"attention biases were built for a {self.query_grid}x{self.key_grid} query/key grid, "
                f"got {tuple(query_grid)}x{tuple(key_grid)}; build the layer for this input resolution"
            )
        return self.biases[:, self.index]


class LocalFFN(nn.Module):
    """EfficientFormerV2's MLP with a depthwise mid conv (official `Mlp(mid_conv=True)`).

    conv1x1 -> BN -> GELU -> DW3x3 -> BN -> GELU -> conv1x1 -> BN; NCHW in and out, same shape.
    """

    def __init__(self, ops: Ops, width: int, hidden: int) -> None:
        super().__init__()
        self.expand = _conv_norm(ops, width, hidden)
        self.mid = _depthwise_norm(ops, hidden)
        self.project = _conv_norm(ops, hidden, width)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.expand(x))
        x = self.act(self.mid(x))
        return self.project(x)


class FFNBlock(nn.Module):
    """The `ffn` block: x + γ · LocalFFN(x), γ a per-channel layer scale."""

    def __init__(self, ops: Ops, width: int, expansion: int) -> None:
        super().__init__()
        self.mlp = LocalFFN(ops, width, width * expansion)
        self.mlp_scale = ops.layer_scale(width, LAYER_SCALE_INIT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp_scale(self.mlp(x))


class Attention4D(nn.Module):
    """Multi-head self-attention on an NCHW map (official `Attention4D`), output shape = input shape.

    Q, K, V are conv1x1 + BN; a DW3x3 + BN "local V" of the values is added to the attention output;
    talking-head 1x1 convs mix the heads before and after the softmax; learned biases per offset;
    projection GELU -> conv1x1 -> BN. `strided`: attend on a DW3x3 s2 + BN downsampled map and
    upsample the result bilinearly back to the input size. `input_size` fixes the bias grid.
    """

    def __init__(
        self,
        ops: Ops,
        width: int,
        input_size: tuple[int, int],
        strided: bool,
        heads: int = ATTENTION_HEADS,
        key_dim: int = ATTENTION_KEY_DIM,
        attention_ratio: int = ATTENTION_RATIO,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.scale = key_dim**-0.5
        value_channels = heads * key_dim * attention_ratio
        self.stride_conv = _depthwise_norm(ops, width, stride=2) if strided else None
        # the size the strided output is upsampled back to: the layer is built for one input size
        # (its bias grid), and a constant target keeps every later shape static in an ONNX export
        # (a traced one leaves the exporter unable to split or normalise the channels downstream)
        self.input_size = tuple(input_size)
        grid = _strided_size(input_size, 2) if strided else tuple(input_size)
        self.q = _conv_norm(ops, width, heads * key_dim)
        self.k = _conv_norm(ops, width, heads * key_dim)
        self.v = _conv_norm(ops, width, value_channels)
        self.v_local = _depthwise_norm(ops, value_channels)
        # talking heads mix a fixed number of heads: plain convs, not width-dependent
        self.talking_head_pre = nn.Conv2d(heads, heads, 1)
        self.talking_head_post = nn.Conv2d(heads, heads, 1)
        self.bias = _AttentionBias(heads, grid, grid)
        self.proj = nn.Sequential(nn.GELU(), ops.conv2d(value_channels, width, 1), ops.batch_norm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        if self.stride_conv is not None:
            x = self.stride_conv(x)
        grid = (x.shape[2], x.shape[3])
        tokens = grid[0] * grid[1]
        q = self.q(x).flatten(2).reshape(batch, self.heads, -1, tokens).transpose(2, 3)  # B,h,N,kd
        k = self.k(x).flatten(2).reshape(batch, self.heads, -1, tokens)  # B,h,kd,N
        v = self.v(x)
        v_local = self.v_local(v)
        v = v.flatten(2).reshape(batch, self.heads, -1, tokens).transpose(2, 3)  # B,h,N,d
        attention = (q @ k) * self.scale + self.bias(grid, grid)
        attention = self.talking_head_pre(attention).softmax(dim=-1)
        attention = self.talking_head_post(attention)
        out = (attention @ v).transpose(2, 3).reshape(batch, -1, grid[0], grid[1]) + v_local
        if self.stride_conv is not None:
            # bilinear x2 back to the block's input size (official nn.Upsample(scale_factor=2))
            out = F.interpolate(out, size=self.input_size, mode="bilinear", align_corners=False)
        return self.proj(out)


class AttentionFFNBlock(nn.Module):
    """The `attn_ffn` block: x + γ1 · Attention4D(x), then x + γ2 · LocalFFN(x)."""

    def __init__(self, ops: Ops, width: int, expansion: int, input_size: tuple[int, int], strided: bool) -> None:
        super().__init__()
        self.token_mixer = Attention4D(ops, width, input_size, strided)
        self.token_mixer_scale = ops.layer_scale(width, LAYER_SCALE_INIT)
        self.mlp = LocalFFN(ops, width, width * expansion)
        self.mlp_scale = ops.layer_scale(width, LAYER_SCALE_INIT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mixer_scale(self.token_mixer(x))
        return x + self.mlp_scale(self.mlp(x))


class LocalGlobalQuery(nn.Module):
    """Stride-2 query of the attention downsample (official `LGQuery`).

    DW3x3 s2 (no norm) + AvgPool(1, s2) (i.e. subsampling), summed, then conv1x1 + BN.
    """

    def __init__(self, ops: Ops, width: int, query_channels: int) -> None:
        super().__init__()
        self.local = ops.depthwise_conv2d(width, LOCAL_KERNEL, 2, LOCAL_KERNEL // 2)
        self.pool = nn.AvgPool2d(1, 2, 0)
        self.proj = _conv_norm(ops, width, query_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.local(x) + self.pool(x))


class AttentionDownsample(nn.Module):
    """Attention that halves the resolution and changes the width (official `Attention4DDownsample`).

    Queries on the stride-2 grid (`LocalGlobalQuery`), keys and values on the input grid, learned
    biases per offset, softmax (no talking heads), a DW3x3 s2 + BN local V added, GELU -> conv1x1 -> BN.
    """

    def __init__(
        self,
        ops: Ops,
        in_channels: int,
        out_channels: int,
        input_size: tuple[int, int],
        heads: int = DOWNSAMPLE_ATTENTION_HEADS,
        key_dim: int = DOWNSAMPLE_ATTENTION_KEY_DIM,
        attention_ratio: int = DOWNSAMPLE_ATTENTION_RATIO,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.scale = key_dim**-0.5
        value_channels = heads * key_dim * attention_ratio
        key_grid = tuple(input_size)
        query_grid = _strided_size(key_grid, 2)
        # official: a query at (i, j) of the coarse grid sits at ceil(R / R2) * (i, j) of the input grid
        query_step = math.ceil(key_grid[0] / query_grid[0])
        self.q = LocalGlobalQuery(ops, in_channels, heads * key_dim)
        self.k = _conv_norm(ops, in_channels, heads * key_dim)
        self.v = _conv_norm(ops, in_channels, value_channels)
        self.v_local = _depthwise_norm(ops, value_channels, stride=2)
        self.bias = _AttentionBias(heads, query_grid, key_grid, query_step)
        self.proj = nn.Sequential(nn.GELU(), ops.conv2d(value_channels, out_channels, 1), ops.batch_norm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        key_grid = (x.shape[2], x.shape[3])
        q = self.q(x)
        query_grid = (q.shape[2], q.shape[3])
        q = q.flatten(2).reshape(batch, self.heads, -1, query_grid[0] * query_grid[1]).transpose(2, 3)
        k = self.k(x).flatten(2).reshape(batch, self.heads, -1, key_grid[0] * key_grid[1])
        v = self.v(x)
        v_local = self.v_local(v)
        v = v.flatten(2).reshape(batch, self.heads, -1, key_grid[0] * key_grid[1]).transpose(2, 3)
        attention = ((q @ k) * self.scale + self.bias(query_grid, key_grid)).softmax(dim=-1)
        out = (attention @ v).transpose(2, 3).reshape(batch, -1, query_grid[0], query_grid[1]) + v_local
        return self.proj(out)


class Downsample(nn.Module):
    """Between stages: conv3x3 s2 + BN, plus (into the last stage) an `AttentionDownsample` branch."""

    def __init__(self, ops: Ops, in_channels: int, out_channels: int, input_size: tuple[int, int], attention: bool) -> None:
        super().__init__()
        self.attention = AttentionDownsample(ops, in_channels, out_channels, input_size) if attention else None
        self.conv = _conv_norm(ops, in_channels, out_channels, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attention is None:
            return self.conv(x)
        return self.attention(x) + self.conv(x)


class Stem(nn.Module):
    """Two conv3x3 s2 + BN + GELU: 3 -> width/2 -> width channels at 1/4 resolution."""

    def __init__(self, ops: Ops, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            _conv_norm(ops, in_channels, out_channels // 2, kernel_size=3, stride=2),
            nn.GELU(),
            _conv_norm(ops, out_channels // 2, out_channels, kernel_size=3, stride=2),
            nn.GELU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ClassifierHead(nn.Module):
    """BN -> global mean -> classifier and distillation linears; logits = their mean.

    The official model returns both logits while training (for the distillation loss) and their
    mean at eval; here it is always the mean, so the network has one output in both modes.
    """

    def __init__(self, ops: Ops, width: int, num_classes: int) -> None:
        super().__init__()
        self.norm = ops.batch_norm2d(width)
        self.classifier = ops.linear(width, num_classes)
        self.distillation = ops.linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.norm(x).flatten(2).mean(-1)
        return (self.classifier(features) + self.distillation(features)) / 2


# -- layer kinds: builders (costs come from a trace of the module, search_spaces.tracing) --------------------------------------------------
def _strided_option(spec: LayerSpec) -> bool:
    return bool(spec.option("strided", False))


def _build_ffn(spec: LayerSpec, ops: Ops) -> nn.Module:
    return FFNBlock(ops, spec.in_channels, spec.expansion)


def _build_attn_ffn(spec: LayerSpec, ops: Ops) -> nn.Module:
    return AttentionFFNBlock(ops, spec.in_channels, spec.expansion, spec.input_size, _strided_option(spec))


def _build_stem(spec: LayerSpec, ops: Ops) -> nn.Module:
    return Stem(ops, spec.in_channels, spec.out_channels)


def _build_downsample(spec: LayerSpec, ops: Ops) -> nn.Module:
    return Downsample(ops, spec.in_channels, spec.out_channels, spec.input_size, bool(spec.option("attention", False)))


def _build_head(spec: LayerSpec, ops: Ops) -> nn.Module:
    return ClassifierHead(ops, spec.in_channels, spec.out_channels)


FFN = register_block_type(
    BlockType("ffn", has_expansion=True, summary="EfficientFormerV2 local FFN: conv1x1, DW3x3, conv1x1 (BN, GELU)")
)
ATTN_FFN = register_block_type(
    BlockType(
        "attn_ffn",
        has_expansion=True,
        summary="EfficientFormerV2 Attention4D (8 heads, talking heads, local V; strided in S3) + local FFN",
    )
)

for _kind in (
    LayerKind(FFN.name, _build_ffn),
    LayerKind(ATTN_FFN.name, _build_attn_ffn),
    LayerKind(STEM_KIND, _build_stem),
    LayerKind(DOWNSAMPLE_KIND, _build_downsample),
    LayerKind(HEAD_KIND, _build_head),
):
    register_layer_kind(_kind)


# -- the search space ----------------------------------------------------------------------------
class EfficientFormerV2Space(SearchSpace):
    """EfficientFormerV2's space: per-stage width, depth, block type and per-block FFN expansion.

    S1/S2 hold `ffn` blocks, S3/S4 `ffn` and `attn_ffn` blocks in any order (the attention in S3 is
    strided); the largest network has V2-L's layout. Layer walk: stem, per stage its downsample
    (from S2 on; the one into S4 with the attention branch) and its blocks, then the head.
    """

    name = SPACE_NAME
    family = "efficientformer_v2"
    stages = (
        StageChoices((24, 32, 40), 5, (FFN.name,), EXPANSIONS),
        StageChoices(width_range(40, 80, 8), 5, (FFN.name,), EXPANSIONS),
        StageChoices(width_range(80, 192, 8), 15, (FFN.name, ATTN_FFN.name), EXPANSIONS),
        StageChoices(width_range(160, 384, 8), 10, (FFN.name, ATTN_FFN.name), EXPANSIONS),
    )
    block_types = {FFN.name: FFN, ATTN_FFN.name: ATTN_FFN}
    default_resolution = 224
    summary = "EfficientFormerV2 (Li et al., ICCV 2023; snap-research/EfficientFormer): local FFN + Attention4D blocks"

    def largest_block_types(self, stage_index: int) -> tuple[str, ...]:
        stage = self.stages[stage_index]
        attention = LARGEST_ATTENTION_BLOCKS[stage_index]
        return (FFN.name,) * (stage.max_depth - attention) + (ATTN_FFN.name,) * attention

    def downsample_options(self, stage_index: int, walk: LayerWalk) -> tuple[tuple[str, Any], ...]:
        return (("attention", stage_index == ATTENTION_DOWNSAMPLE_STAGE),)

    def block_options(self, stage_index: int, block: Block, walk: LayerWalk) -> tuple[tuple[str, Any], ...]:
        return (("strided", stage_index == STRIDED_ATTENTION_STAGE),) if block.type == ATTN_FFN.name else ()


SPACE = register_space(EfficientFormerV2Space())
