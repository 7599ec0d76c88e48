"""EdgeNeXt: Efficiently Amalgamated CNN-Transformer Architecture for Mobile Vision Applications.

Maaz et al., ECCV 2022 workshops (arXiv:2206.10589); official code: github.com/mmaaz60/EdgeNeXt
(`models/edgenext.py`, `models/conv_encoder.py`, `models/sdta_encoder.py`, `models/layers.py`).

The family has two block types. `conv_encoder` is a ConvNeXt-style block: a depthwise kxk conv
(k grows with the stage: 3, 5, 7, 9), then in channels-last layout LayerNorm, a linear MLP with
GELU and a layer scale, added back to the input. `sdta` (split depth-wise transpose attention)
first splits the channels into `scales` groups and mixes them hierarchically with depthwise 3x3
convs (Res2Net style), adds a Fourier positional encoding (stage 2 only), then runs XCA, an
attention across channels rather than tokens (linear in the token count), and a linear MLP, each
with LayerNorm and layer scale. Stem: conv 4x4 s4 + LayerNorm; downsample: LayerNorm + conv 2x2 s2;
head: global average pool -> LayerNorm -> linear. Default input 256x256, as the paper trains.
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

SPACE_NAME = "edgenext"
CONV_ENCODER = "conv_encoder"
SDTA = "sdta"

# Depthwise kernel of the conv encoders per stage: the receptive field grows with depth (paper §3.1).
CONV_KERNEL_SIZES = (3, 5, 7, 9)
# Channel groups of the SDTA split per stage (official `d2_scales`); more groups at lower resolution.
SDTA_SCALES = (2, 2, 3, 4)
# Only stage 2's SDTA adds a positional encoding (official `use_pos_embd_xca`); the paper finds
# that later positional encodings hurt accuracy.
POSITIONAL_ENCODING_STAGE = 1
# Depthwise kernel of the hierarchical split convs inside SDTA.
SPLIT_KERNEL_SIZE = 3
# Layer scale init (CaiT/ConvNeXt value used by the official model) and the eps of all its LayerNorms.
LAYER_SCALE_INIT = 1e-6
NORM_EPS = 1e-6
# Fourier positional encoding (DETR/XCiT style): 32 frequencies per axis, so 64 sin/cos channels
# that a 1x1 conv projects to the block width; 10000 is the classic frequency base.
FOURIER_FEATURES_PER_AXIS = 32
FOURIER_TEMPERATURE = 10000.0
STEM_STRIDE = 4
DOWNSAMPLE_STRIDE = 2


def split_width(channels: int, scales: int) -> int:
    """Channels of each SDTA split group: ceil(channels / scales), as the official `torch.split`."""
    return math.ceil(channels / scales)


def split_conv_count(scales: int) -> int:
    """Depthwise convs of an SDTA split: one per group except the last, which passes through."""
    return max(scales - 1, 1)


# -- blocks ------------------------------------------------------------------------------------
class FourierPositionalEncoding(nn.Module):
    """Sin/cos features of the normalised (y, x) position, projected by a 1x1 conv to the width.

    Maps an NCHW tensor to the (1, C, H, W) encoding of its grid (broadcast over the batch). The
    features depend on H and W only; the projection's input is always the 64 Fourier channels, so
    its output is cut to the input's C (a no-op for static ops, the prefix for a max-size conv).
    """

    def __init__(self, ops: Ops, channels: int) -> None:
        super().__init__()
        self.projection = ops.conv2d(2 * FOURIER_FEATURES_PER_AXIS, channels, 1)

    @staticmethod
    def fourier_features(height: int, width: int, device: torch.device) -> torch.Tensor:
        """(1, 64, H, W) features: for y then x, sin/cos of position scaled to (0, 2π]."""
        eps = 1e-6  # official value; keeps the normalisation finite for a 1-pixel axis
        y = torch.arange(1, height + 1, dtype=torch.float32, device=device) / (height + eps) * 2 * math.pi
        x = torch.arange(1, width + 1, dtype=torch.float32, device=device) / (width + eps) * 2 * math.pi
        index = torch.arange(FOURIER_FEATURES_PER_AXIS, dtype=torch.float32, device=device)
        pair_index = torch.div(index, 2, rounding_mode="floor")  # sin and cos of a pair share a frequency
        frequencies = FOURIER_TEMPERATURE ** (2 * pair_index / FOURIER_FEATURES_PER_AXIS)

        def encode(positions: torch.Tensor) -> torch.Tensor:
            angles = positions[:, None] / frequencies  # (length, features)
            # even features take sin, odd ones cos, interleaved as the official stack+flatten does
            return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

        pos_y = encode(y)[:, None, :].expand(height, width, FOURIER_FEATURES_PER_AXIS)
        pos_x = encode(x)[None, :, :].expand(height, width, FOURIER_FEATURES_PER_AXIS)
        return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        features = self.fourier_features(height, width, x.device).to(x.dtype)
        return self.projection(features)[:, : x.shape[1]]


class CrossCovarianceAttention(nn.Module):
    """XCA (XCiT): attention between channels, not tokens, so it is linear in the token count.

    Tokens (B, N, C) in and out. Per head, queries and keys are L2-normalised along the tokens,
    the (C/h x C/h) attention map is scaled by a learned per-head temperature, softmaxed and applied
    to the values. `heads` is structural; C is read from the input.
    """

    def __init__(self, ops: Ops, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        # one temperature per head: a fixed-size parameter, independent of the width
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = ops.linear(channels, 3 * channels, output_chunks=3)
        self.proj = ops.linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        head_dim = channels // self.heads
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, head_dim)
        # (3, B, heads, head_dim, N): channels of a head as rows, tokens as columns
        query, key, value = qkv.permute(2, 0, 3, 4, 1).unbind(0)
        query = F.normalize(query, dim=-1)
        key = F.normalize(key, dim=-1)
        attention = (query @ key.transpose(-2, -1)) * self.temperature[: self.heads]  # a supernet may run fewer heads
        attention = attention.softmax(dim=-1)
        x = (attention @ value).permute(0, 3, 1, 2).reshape(batch, tokens, channels)
        return self.proj(x)


class ConvEncoder(nn.Module):
    """EdgeNeXt conv encoder: x + γ·MLP(LN(DWConv_k(x))), NCHW in and out, same shape.

    The official block runs its LayerNorm and MLP channels-last (permute, LN, linear, GELU,
    linear, permute back); here the same function stays NCHW: a channels-first LayerNorm and the
    MLP's linears applied over the channels as 1x1 convolutions (`Ops.channel_linear`, the same
    `(out, in)` weights). onnxruntime runs it 3-9% faster over the EdgeNeXt references
    (`benchmarks/export_speed.py`), and on the Neural Engine 1x1 convolutions are the native form
    of a linear layer. `kernel_size` and `expansion` are structural; C is read from the input.
    """

    def __init__(self, ops: Ops, channels: int, expansion: int, kernel_size: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.expansion = expansion
        hidden = expansion * channels
        self.dwconv = ops.depthwise_conv2d(channels, kernel_size, padding=kernel_size // 2)
        self.norm = ops.channel_layer_norm(channels, eps=NORM_EPS)
        self.fc1 = ops.channel_linear(channels, hidden)
        self.act = nn.GELU()
        self.fc2 = ops.channel_linear(hidden, channels)
        self.layer_scale = ops.layer_scale(channels, LAYER_SCALE_INIT, channel_dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layer_scale(self.fc2(self.act(self.fc1(self.norm(self.dwconv(x))))))


class SDTAEncoder(nn.Module):
    """Split depth-wise transpose attention encoder, NCHW in and out, same shape.

    1. Split the C channels into `scales` groups of ceil(C / scales); group i (but the last) adds
       the previous group's output and runs a depthwise 3x3 conv; the last group passes through.
    2. Optionally add the Fourier positional encoding; to tokens; x + γ1·XCA(LN(x)).
    3. Channels-last x + γ2·MLP(LN(x)), where the residual of this step is the block input (as in
       the official code: the second residual skips the split convs and the attention).
    `heads`, `scales`, `expansion` and the positional-encoding flag are structural.
    """

    def __init__(
        self, ops: Ops, channels: int, expansion: int, heads: int, scales: int, positional_encoding: bool
    ) -> None:
        super().__init__()
        self.scales = scales
        self.expansion = expansion
        group = split_width(channels, scales)
        self.split_convs = nn.ModuleList(
            ops.depthwise_conv2d(group, SPLIT_KERNEL_SIZE, padding=SPLIT_KERNEL_SIZE // 2)
            for _ in range(split_conv_count(scales))
        )
        self.positional_encoding = FourierPositionalEncoding(ops, channels) if positional_encoding else None
        self.attention_norm = ops.layer_norm(channels, eps=NORM_EPS)
        self.attention = CrossCovarianceAttention(ops, channels, heads)
        self.attention_scale = ops.layer_scale(channels, LAYER_SCALE_INIT, channel_dim=-1)
        hidden = expansion * channels
        self.mlp_norm = ops.layer_norm(channels, eps=NORM_EPS)
        self.fc1 = ops.linear(channels, hidden)
        self.act = nn.GELU()
        self.fc2 = ops.linear(hidden, channels)
        self.mlp_scale = ops.layer_scale(channels, LAYER_SCALE_INIT, channel_dim=-1)

    def split_mix(self, x: torch.Tensor) -> torch.Tensor:
        """Hierarchical depthwise mixing of the channel groups (step 1)."""
        groups = torch.split(x, split_width(x.shape[1], self.scales), dim=1)
        mixed = []
        for index, conv in enumerate(self.split_convs):
            carried = groups[index] if index == 0 else mixed[-1] + groups[index]
            mixed.append(conv(carried))
        mixed.extend(groups[len(self.split_convs):])
        return torch.cat(mixed, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.split_mix(x)
        if self.positional_encoding is not None:
            x = x + self.positional_encoding(x)
        batch, channels, height, width = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, N, C)
        tokens = tokens + self.attention_scale(self.attention(self.attention_norm(tokens)))
        x = tokens.reshape(batch, height, width, channels)  # channels-last view, no copy
        x = self.mlp_scale(self.fc2(self.act(self.fc1(self.mlp_norm(x)))))
        return shortcut + x.permute(0, 3, 1, 2)


class Stem(nn.Module):
    """Patchify stem: conv 4x4 stride 4 then channels-first LayerNorm (3 x H x W -> C x H/4 x W/4)."""

    def __init__(self, ops: Ops, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ops.conv2d(in_channels, out_channels, STEM_STRIDE, stride=STEM_STRIDE)
        self.norm = ops.channel_layer_norm(out_channels, eps=NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Downsample(nn.Module):
    """Between stages: channels-first LayerNorm then conv 2x2 stride 2 (C_in -> C_out, half H and W)."""

    def __init__(self, ops: Ops, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm = ops.channel_layer_norm(in_channels, eps=NORM_EPS)
        self.conv = ops.conv2d(in_channels, out_channels, DOWNSAMPLE_STRIDE, stride=DOWNSAMPLE_STRIDE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))


class ClassifierHead(nn.Module):
    """Global average pool, LayerNorm on the pooled vector, linear classifier: (B, C, H, W) -> (B, classes)."""

    def __init__(self, ops: Ops, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm = ops.layer_norm(in_channels, eps=NORM_EPS)
        self.classifier = ops.linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.norm(x.mean((-2, -1))))


# -- layer kinds: builders (costs come from a trace of the module, search_spaces.tracing) ---------------------------------------------------
def _build_conv_encoder(spec: LayerSpec, ops: Ops) -> nn.Module:
    return ConvEncoder(ops, spec.in_channels, spec.expansion, int(spec.option("kernel")))


def _build_sdta(spec: LayerSpec, ops: Ops) -> nn.Module:
    return SDTAEncoder(
        ops,
        spec.in_channels,
        spec.expansion,
        spec.heads,
        int(spec.option("scales")),
        bool(spec.option("pos_encoding")),
    )


def _build_stem(spec: LayerSpec, ops: Ops) -> nn.Module:
    return Stem(ops, spec.in_channels, spec.out_channels)


def _build_downsample(spec: LayerSpec, ops: Ops) -> nn.Module:
    return Downsample(ops, spec.in_channels, spec.out_channels)


def _build_head(spec: LayerSpec, ops: Ops) -> nn.Module:
    return ClassifierHead(ops, spec.in_channels, spec.out_channels)


# -- the space -----------------------------------------------------------------------------------
class EdgeNeXtSpace(SearchSpace):
    """EdgeNeXt search space: four stages of `conv_encoder` / `sdta` slots around the fixed parts.

    Per stage: width, depth, block type per slot, per-block MLP expansion and (for `sdta`) heads.
    Kernel size, split scales and the positional encoding follow the stage (official values); the
    largest network uses the official layout (conv encoders, one SDTA last in stages 2-4).
    """

    name = SPACE_NAME
    family = "edgenext"
    stages = (
        StageChoices(width_range(24, 48, 8), max_depth=3, block_types=(CONV_ENCODER,), expansions=(2, 3, 4)),
        StageChoices(
            width_range(48, 96, 16), max_depth=3, block_types=(CONV_ENCODER, SDTA), expansions=(2, 3, 4), heads=(4, 8)
        ),
        StageChoices(
            width_range(88, 160, 4), max_depth=9, block_types=(CONV_ENCODER, SDTA), expansions=(2, 3, 4), heads=(4, 8)
        ),
        StageChoices(
            width_range(168, 304, 8), max_depth=3, block_types=(CONV_ENCODER, SDTA), expansions=(2, 3, 4), heads=(4, 8)
        ),
    )
    block_types = {
        CONV_ENCODER: BlockType(
            CONV_ENCODER, has_expansion=True, summary="DW kxk conv + channels-last LN + MLP, layer scale (EdgeNeXt)"
        ),
        SDTA: BlockType(
            SDTA,
            has_expansion=True,
            has_heads=True,
            summary="split depthwise 3x3 + XCA channel attention + MLP, layer scales (EdgeNeXt)",
        ),
    }
    default_resolution = 256
    summary = "EdgeNeXt (Maaz et al. 2022, mmaaz60/EdgeNeXt): conv encoders + SDTA blocks"

    def largest_block_types(self, stage_index: int) -> tuple[str, ...]:
        stage = self.stages[stage_index]
        if SDTA not in stage.block_types:
            return (CONV_ENCODER,) * stage.max_depth
        return (CONV_ENCODER,) * (stage.max_depth - 1) + (SDTA,)

    def block_options(self, stage_index: int, block: Block, walk: LayerWalk) -> tuple[tuple[str, Any], ...]:
        if block.type == CONV_ENCODER:
            return (("kernel", CONV_KERNEL_SIZES[stage_index]),)
        return (("scales", SDTA_SCALES[stage_index]), ("pos_encoding", stage_index == POSITIONAL_ENCODING_STAGE))


# -- registration ----------------------------------------------------------------------------------
for _block_type in EdgeNeXtSpace.block_types.values():
    register_block_type(_block_type)
register_layer_kind(LayerKind(CONV_ENCODER, _build_conv_encoder))
register_layer_kind(LayerKind(SDTA, _build_sdta))
register_layer_kind(LayerKind(f"{SPACE_NAME}.stem", _build_stem))
register_layer_kind(LayerKind(f"{SPACE_NAME}.downsample", _build_downsample))
register_layer_kind(LayerKind(f"{SPACE_NAME}.head", _build_head))
register_space(EdgeNeXtSpace())
