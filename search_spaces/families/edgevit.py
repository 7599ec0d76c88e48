"""EdgeViT: local-global-local (LGL) bottleneck blocks as a search space.

Paper: Pan et al., "EdgeViTs: Competing Light-weight CNNs on Mobile Devices with Vision Transformers",
ECCV 2022 (arXiv:2205.03436). Official code: https://github.com/saic-fi/edgevit (`src/edgevit.py`);
this module reproduces that code's variants XXS / XS / S (parameter for parameter), not the paper's
table (which quotes 11.1 M for S, the code gives 13.11 M).

Space `edgevit`: four stages at strides 4, 8, 16, 32; every slot holds an `lgl` block (or identity).
An `lgl` block is, where the stage's sample ratio r > 1, a convolutional local aggregation
(positional DW3x3; BN -> 1x1 -> DW5x5 -> 1x1; BN -> conv MLP), then a transformer part on tokens:
positional DW3x3, LN -> global sparse attention (one token per r x r window, MHSA over those,
propagated back by a depthwise transposed conv, LN, projection), LN -> MLP. With r = 1 the
attention is plain MHSA and there is no local aggregation. Stem: conv 4x4 s4 + LN; downsample:
conv 2x2 s2 + LN (the official PatchEmbed); head: BN -> global mean -> linear.
"""

from __future__ import annotations

from typing import Any

import torch
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

SPACE_NAME = "edgevit"
LGL = "lgl"

#: Sample ratio r of the global sparse attention per stage (official `sr_ratios`): attention runs
#: over one token per r x r window, so stage 1 (56x56 at 224) attends over 14x14 tokens.
SAMPLE_RATIOS = (4, 2, 2, 1)
#: Stem patch 4x4 stride 4, downsample patches 2x2 stride 2 (official PatchEmbed patch sizes).
STEM_PATCH = 4
DOWNSAMPLE_PATCH = 2
#: Positional encoding (DW3x3) and local aggregation (DW5x5) kernels of the official block.
POSITION_KERNEL = 3
AGGREGATION_KERNEL = 5
#: The block's two LayerNorms use eps 1e-6 (official `norm_layer`); the PatchEmbed LN and the LN
#: after local propagation are plain `nn.LayerNorm(dim)` in the official code, i.e. eps 1e-5.
BLOCK_NORM_EPS = 1e-6
DEFAULT_NORM_EPS = 1e-5


# -- blocks (small to large) ----------------------------------------------------------------------
class ConvMlp(nn.Module):
    """1x1 conv -> GELU -> 1x1 conv on NCHW maps; hidden width = expansion x input width."""

    def __init__(self, ops: Ops, width: int, expansion: int) -> None:
        super().__init__()
        hidden = width * expansion
        self.fc1 = ops.conv2d(width, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = ops.conv2d(hidden, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TokenMlp(nn.Module):
    """Linear -> GELU -> linear on (batch, tokens, channels); hidden = expansion x width."""

    def __init__(self, ops: Ops, width: int, expansion: int) -> None:
        super().__init__()
        hidden = width * expansion
        self.fc1 = ops.linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = ops.linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class GlobalSparseAttention(nn.Module):
    """Multi-head self-attention over one token per r x r window, propagated back to every token.

    Input and output: tokens (batch, H*W, C) of an H x W map. With `sample_ratio` r > 1 the map is
    subsampled with stride r (AvgPool2d(1, r): the top-left token of each window), attended, spread
    back to H x W with a depthwise transposed conv (kernel r, stride r), then LayerNorm'd; with
    r = 1 it is plain MHSA. Head dim = C / heads, read from the input; qkv bias on.
    """

    def __init__(self, ops: Ops, width: int, heads: int, sample_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.sample_ratio = sample_ratio
        self.qkv = ops.linear(width, 3 * width, bias=True, output_chunks=3)
        if sample_ratio > 1:
            self.sampler = nn.AvgPool2d(kernel_size=1, stride=sample_ratio)
            self.local_propagation = ops.depthwise_conv_transpose2d(width, sample_ratio, sample_ratio)
            self.norm = ops.layer_norm(width, eps=DEFAULT_NORM_EPS)
        self.proj = ops.linear(width, width)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, _, channels = tokens.shape
        ratio = self.sample_ratio
        x = tokens
        if ratio > 1:
            x = x.transpose(1, 2).reshape(batch, channels, height, width)
            x = self.sampler(x).flatten(2).transpose(1, 2)
        head_dim = channels // self.heads
        qkv = self.qkv(x).reshape(batch, -1, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        query, key, value = qkv[0], qkv[1], qkv[2]
        # a Python float, not a traced shape: the export then holds a constant, not a Pow of a Shape
        attention = (query @ key.transpose(-2, -1)) * (float(head_dim) ** -0.5)
        attention = attention.softmax(dim=-1)
        x = (attention @ value).transpose(1, 2).reshape(batch, -1, channels)
        if ratio > 1:
            x = x.transpose(1, 2).reshape(batch, channels, height // ratio, width // ratio)
            x = self.local_propagation(x).flatten(2).transpose(1, 2)
            x = self.norm(x)
        return self.proj(x)


class LocalAggregation(nn.Module):
    """The convolutional "local" part of an LGL block (only where the sample ratio r > 1).

    NCHW in and out: x + DW3x3(x); x + 1x1(DW5x5(1x1(BN(x)))); x + ConvMlp(BN(x)).
    """

    def __init__(self, ops: Ops, width: int, expansion: int) -> None:
        super().__init__()
        self.position = ops.depthwise_conv2d(width, POSITION_KERNEL, padding=POSITION_KERNEL // 2)
        self.norm1 = ops.batch_norm2d(width)
        self.conv1 = ops.conv2d(width, width, 1)
        self.aggregate = ops.depthwise_conv2d(width, AGGREGATION_KERNEL, padding=AGGREGATION_KERNEL // 2)
        self.conv2 = ops.conv2d(width, width, 1)
        self.norm2 = ops.batch_norm2d(width)
        self.mlp = ConvMlp(ops, width, expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.position(x)
        x = x + self.conv2(self.aggregate(self.conv1(self.norm1(x))))
        return x + self.mlp(self.norm2(x))


class GlobalAttentionBlock(nn.Module):
    """The transformer part of an LGL block: NCHW in and out, tokens inside.

    x + DW3x3(x); to tokens; x + GlobalSparseAttention(LN(x)); x + TokenMlp(LN(x)); back to NCHW.
    """

    def __init__(self, ops: Ops, width: int, heads: int, expansion: int, sample_ratio: int) -> None:
        super().__init__()
        self.position = ops.depthwise_conv2d(width, POSITION_KERNEL, padding=POSITION_KERNEL // 2)
        self.norm1 = ops.layer_norm(width, eps=BLOCK_NORM_EPS)
        self.attention = GlobalSparseAttention(ops, width, heads, sample_ratio)
        self.norm2 = ops.layer_norm(width, eps=BLOCK_NORM_EPS)
        self.mlp = TokenMlp(ops, width, expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.position(x)
        batch, channels, height, width = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        tokens = tokens + self.attention(self.norm1(tokens), height, width)
        tokens = tokens + self.mlp(self.norm2(tokens))
        return tokens.transpose(1, 2).reshape(batch, channels, height, width)


class LGLBlock(nn.Module):
    """EdgeViT's local-global-local block (`lgl`): NCHW in, NCHW out of the same shape.

    Local aggregation exists only where `sample_ratio` > 1; the global part always does.
    `expansion` is the MLP ratio of both MLPs; `heads` the attention head count. The forward reads
    `sample_ratio`, not whether `local` holds a module, so a supernet block built with r > 1 also
    runs as r = 1 where a space makes the ratio a per-slot choice (`hybrid`).
    """

    def __init__(self, ops: Ops, width: int, heads: int, expansion: int, sample_ratio: int) -> None:
        super().__init__()
        self.sample_ratio = sample_ratio
        self.local = LocalAggregation(ops, width, expansion) if sample_ratio > 1 else nn.Identity()
        self.attention = GlobalAttentionBlock(ops, width, heads, expansion, sample_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.local(x) if self.sample_ratio > 1 else x)


class PatchEmbedding(nn.Module):
    """Non-overlapping patch conv (kernel = stride = patch) then LayerNorm over channels.

    As the official PatchEmbed, the norm runs on tokens: conv -> to tokens -> LN -> back to NCHW.
    Used as the stem (3 -> C, patch 4) and as each stage's downsample (patch 2).
    """

    def __init__(self, ops: Ops, in_channels: int, out_channels: int, patch: int) -> None:
        super().__init__()
        self.proj = ops.conv2d(in_channels, out_channels, patch, stride=patch)
        self.norm = ops.layer_norm(out_channels, eps=DEFAULT_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        batch, channels, height, width = x.shape
        tokens = self.norm(x.flatten(2).transpose(1, 2))
        return tokens.reshape(batch, height, width, channels).permute(0, 3, 1, 2).contiguous()


class ClassifierHead(nn.Module):
    """BatchNorm2d -> mean over positions -> linear: (batch, C, H, W) -> (batch, classes)."""

    def __init__(self, ops: Ops, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm = ops.batch_norm2d(in_channels)
        self.fc = ops.linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x).flatten(2).mean(-1))


# -- layer kinds: builders (costs come from a trace of the module, search_spaces.tracing) -----------------------------------------------------
def _sample_ratio(spec: LayerSpec) -> int:
    ratio = spec.option("sr")
    if not isinstance(ratio, int) or ratio < 1:
        raise ValueError(f"{spec.key()}: an lgl spec needs an integer option sr >= 1")
    return ratio


def build_lgl(spec: LayerSpec, ops: Ops) -> nn.Module:
    return LGLBlock(ops, spec.in_channels, spec.heads, spec.expansion, _sample_ratio(spec))


def build_patch_embedding(spec: LayerSpec, ops: Ops) -> nn.Module:
    return PatchEmbedding(ops, spec.in_channels, spec.out_channels, spec.stride)


def build_head(spec: LayerSpec, ops: Ops) -> nn.Module:
    return ClassifierHead(ops, spec.in_channels, spec.out_channels)


# -- the search space ----------------------------------------------------------------------------
class EdgeViTSpace(SearchSpace):
    """EdgeViT's four LGL stages with elastic width, depth, MLP ratio and (stage 3) head count.

    Sample ratios are fixed per stage (4, 2, 2, 1) and travel in each block's spec as option `sr`.
    The references are the official XXS / XS / S models.
    """

    name = SPACE_NAME
    family = "edgevit"
    stages = (
        StageChoices(widths=(36, 48), max_depth=2, block_types=(LGL,), expansions=(2, 3, 4), heads=(1,)),
        StageChoices(widths=(72, 84, 96), max_depth=3, block_types=(LGL,), expansions=(2, 3, 4), heads=(2,)),
        StageChoices(
            widths=width_range(144, 240, 8), max_depth=6, block_types=(LGL,), expansions=(2, 3, 4), heads=(4, 5)
        ),
        StageChoices(
            widths=width_range(288, 384, 16), max_depth=4, block_types=(LGL,), expansions=(2, 3, 4), heads=(8,)
        ),
    )
    block_types = {
        LGL: BlockType(
            LGL,
            has_expansion=True,
            has_heads=True,
            summary="EdgeViT local-global-local block: local aggregation, sparse global attention, propagation",
        )
    }
    default_resolution = 224
    # Total stride 32, and every stage's map must split into whole r x r windows: stage 3 runs at
    # resolution/16 with r = 2, so the resolution must be a multiple of 32 (which covers the rest).
    resolution_multiple = 32
    summary = "EdgeViT (Pan et al., ECCV 2022; saic-fi/edgevit): LGL blocks, references xxs xs s"

    def block_options(self, stage_index: int, block: Block, walk: LayerWalk) -> tuple[tuple[str, Any], ...]:
        return (("sr", SAMPLE_RATIOS[stage_index]),)


# -- registration ---------------------------------------------------------------------------------
for _block_type in EdgeViTSpace.block_types.values():
    register_block_type(_block_type)
register_layer_kind(LayerKind(LGL, build_lgl))
register_layer_kind(LayerKind(f"{SPACE_NAME}.stem", build_patch_embedding))
register_layer_kind(LayerKind(f"{SPACE_NAME}.downsample", build_patch_embedding))
register_layer_kind(LayerKind(f"{SPACE_NAME}.head", build_head))
register_space(EdgeViTSpace())
