"""The cross-family space `hybrid`: MetaPaths that choose among the blocks of all four families.

EfficientFormer (V1), EfficientFormerV2, EdgeViT and EdgeNeXt each search (or hand-design) within
one block family, while their papers argue about which block is the better use of a millisecond at
a given stage. This space lets the search answer that: every slot is a MetaPath over the blocks of
all four families that are dimension-consistent on a 4D (NCHW) map, i.e. that take a map and
return a map of the same shape, so any of them can follow any other:

- EfficientFormerV2 `ffn` (1x1 -> DW3x3 -> 1x1 with BN) and `attn_ffn` (Attention4D + FFN),
- EfficientFormer `meta4d` (3x3 pooling token mixer + conv MLP); its `meta3d` is left out, since
  it turns the map into tokens for the rest of the network (V1's one-way switch),
- EdgeNeXt `conv_encoder` (DW kxk + LayerNorm + MLP), the kernel k a per-slot choice, and `sdta`
  (split depthwise convs + cross-covariance attention over channels),
- EdgeViT `lgl` (local aggregation, attention over one token per r x r window, propagation back),
  the sample ratio r a per-slot choice,
- and identity (an empty slot).

Nothing is written again here: the blocks are the registered ones of their families, built by
their families' builders. What a family fixes per stage becomes a per-slot knob of the
architecture (`kernel`, `sample_ratio`) or a layer option derived from the stage (`strided`
attention in stage 3, SDTA split `scales` and `pos_encoding`), so a layer of this space is the
same layer (same spec key, same latency record) as in its home space.

The frame is EfficientFormerV2's, unchanged: two-conv stem to 1/4 resolution, stride-2 conv
downsamples (the one into stage 4 with V2's attention branch), BN -> mean -> linear head with a
distillation twin, and V2's widths, depths and FFN expansions (2, 3, 4). Every V2 network is
therefore a network of this space (same layers, same weights layout per layer), so the hybrid
front can only match or beat the V2 front under the same search and training.

Which block types each stage allows, and why (at 224 px input):

- Stage 1 (1/4, 56x56 = 3136 tokens): `ffn`, `meta4d`, `conv_encoder`. Convolutional mixers only.
  V1, V2 and EdgeNeXt all keep their first stage free of attention; EdgeViT's stage 1 LGL runs
  attention only by subsampling 4x (196 tokens) behind a convolutional block, and on a 3136-token
  map every attention is the costliest choice of the space on either kind of device.
- Stage 2 (1/8, 784 tokens): adds `sdta` and `lgl` (r in 2, 4). Both avoid token-by-token
  attention over the full map: XCA attends across channels (linear in the token count), which
  EdgeNeXt uses from stage 2 on, with its positional encoding there; LGL attends over 196 (r = 2,
  EdgeViT's choice here) or 49 (r = 4) sampled tokens. No `attn_ffn`: full Attention4D over 784
  tokens is what V2 keeps out of its first two stages.
- Stage 3 (1/16, 196 tokens): every type. `attn_ffn` attends on a stride-2 map (49 tokens), as
  in V2; `lgl` may sample (r = 2, EdgeViT's choice) or attend over every token (r = 1).
- Stage 4 (1/32, 49 tokens): every type; `lgl` with r = 1 only (a 7x7 map has no whole 2x2
  windows; EdgeViT's last stage is plain attention too).

Heads (of `sdta` and `lgl`; `attn_ffn` keeps V2's fixed 8) are a per-slot choice among counts that
divide the width: 2, 4, 8 in stage 2 (EdgeViT uses 2 there, EdgeNeXt 4 or 8), 4, 8 later.
Conv-encoder kernels are 3, 5, 7, 9 in every stage (EdgeNeXt grows them 3 -> 9 with depth; here
the search decides). The largest network is V2-L's layout (FFNs, six `attn_ffn` last in stages 3
and 4), so greedy slimming from it starts in the V2 subspace and leaves it only through block-type
swaps (the action set `v2-types`, `nas.actions.type_actions`); random search and evolution draw
and mutate every type and knob. The smallest is one `meta4d` block per stage (the type with the
fewest weights: no depthwise conv, no attention).

Layer kinds registered here: `hybrid.stem`, `hybrid.downsample`, `hybrid.head` (V2's modules);
space: `hybrid`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from search_spaces.architecture import Architecture, Block
from search_spaces.families import edgenext, edgevit, efficientformer_v1, efficientformer_v2
from search_spaces.layers import LayerKind, get_layer_kind, register_layer_kind
from search_spaces.registry import register_space
from search_spaces.space import LayerWalk, SearchSpace, StageChoices

SPACE_NAME = "hybrid"
FFN = efficientformer_v2.FFN.name
ATTN_FFN = efficientformer_v2.ATTN_FFN.name
META4D = efficientformer_v1.META4D
CONV_ENCODER = edgenext.CONV_ENCODER
SDTA = edgenext.SDTA
LGL = edgevit.LGL

#: depthwise kernel choices of a conv encoder, every stage (EdgeNeXt's per-stage kernels)
KERNELS = (3, 5, 7, 9)
#: LGL sample ratios per stage: the map at 1/8 splits into 2x2 or 4x4 windows, at 1/16 into 2x2
#: (or none), at 1/32 (7x7 at 224) into none
SAMPLE_RATIOS = ((), (2, 4), (1, 2), (1,))
#: head counts of `sdta` and `lgl` per stage (V2 widths are multiples of 8, so all divide them)
HEADS = ((), (2, 4, 8), (4, 8), (4, 8))
#: block types per stage, in one fixed order (V2, V1, EdgeNeXt, EdgeViT); the first, `ffn`, is
#: each stage's conv-style type (V1 actions turn attention-style blocks into it)
STAGE_TYPES = (
    (FFN, META4D, CONV_ENCODER),
    (FFN, META4D, CONV_ENCODER, SDTA, LGL),
    (FFN, ATTN_FFN, META4D, CONV_ENCODER, SDTA, LGL),
    (FFN, ATTN_FFN, META4D, CONV_ENCODER, SDTA, LGL),
)

_V2 = efficientformer_v2.SPACE
# The registered block types, with the knobs this space makes per-slot choices.
BLOCK_TYPES = {
    FFN: efficientformer_v2.FFN,
    ATTN_FFN: efficientformer_v2.ATTN_FFN,
    META4D: efficientformer_v1.BLOCK_TYPES[META4D],
    CONV_ENCODER: dataclasses.replace(edgenext.EdgeNeXtSpace.block_types[CONV_ENCODER], has_kernel=True),
    SDTA: edgenext.EdgeNeXtSpace.block_types[SDTA],
    LGL: dataclasses.replace(edgevit.EdgeViTSpace.block_types[LGL], has_sample_ratio=True),
}


def _stage(index: int) -> StageChoices:
    """V2's widths, depth and expansions for stage `index`, with this space's types and knobs."""
    v2 = _V2.stages[index]
    return StageChoices(
        v2.widths,
        v2.max_depth,
        STAGE_TYPES[index],
        v2.expansions,
        heads=HEADS[index],
        kernels=KERNELS,
        sample_ratios=SAMPLE_RATIOS[index],
    )


class HybridSpace(SearchSpace):
    """Four V2 stages whose slots choose among V2, V1, EdgeNeXt and EdgeViT blocks (module docstring).

    Per slot: block type, expansion, and the type's knobs (`heads` of `sdta`/`lgl`, `kernel` of
    `conv_encoder`, `sample_ratio` of `lgl`). Layer options follow the home families: `attn_ffn`
    is strided in stage 3, SDTA splits into 2/3/4 groups in stages 2/3/4 with the positional
    encoding in stage 2, the downsample into stage 4 has V2's attention branch.
    """

    name = SPACE_NAME
    family = "hybrid"
    stages = tuple(_stage(index) for index in range(4))
    block_types = BLOCK_TYPES
    default_resolution = 224
    # stride 32 overall, and the 1/8 map must split into 4x4 windows (LGL r = 4): a multiple of 32
    resolution_multiple = 32
    summary = ("cross-family: V2 frame, each slot one of ffn, attn_ffn, meta4d, conv_encoder (kernel), "
               "sdta, lgl (sample ratio)")

    def largest_block_types(self, stage_index: int) -> tuple[str, ...]:
        return _V2.largest_block_types(stage_index)

    def smallest_block_types(self, stage_index: int) -> tuple[str, ...]:
        return (META4D,) * self.stages[stage_index].min_depth

    def downsample_options(self, stage_index: int, walk: LayerWalk) -> tuple[tuple[str, Any], ...]:
        return _V2.downsample_options(stage_index, walk)

    # Every V2 network is a network of this space, so V2's references (S0, S1, S2, L) are this
    # space's too: the same blocks under this space's name, read from V2's files, not copied.
    def references(self) -> tuple[str, ...]:
        return _V2.references()

    def reference(self, name: str) -> Architecture:
        if name not in self.references():
            raise KeyError(f"{self.name} has no reference {name!r}; references: {', '.join(self.references())}")
        return self.validate(dataclasses.replace(_V2.reference(name), space=self.name))

    def block_options(self, stage_index: int, block: Block, walk: LayerWalk) -> tuple[tuple[str, Any], ...]:
        if block.type == ATTN_FFN:
            return _V2.block_options(stage_index, block, walk)
        if block.type == CONV_ENCODER:
            return (("kernel", block.kernel),)
        if block.type == SDTA:
            return (("scales", edgenext.SDTA_SCALES[stage_index]),
                    ("pos_encoding", stage_index == edgenext.POSITIONAL_ENCODING_STAGE))
        if block.type == LGL:
            return (("sr", block.sample_ratio),)
        return ()


# -- registration: the fixed parts are V2's modules under this space's kind names ----------------
for _part in ("stem", "downsample", "head"):
    register_layer_kind(LayerKind(f"{SPACE_NAME}.{_part}", get_layer_kind(f"{efficientformer_v2.SPACE_NAME}.{_part}").build))
SPACE = register_space(HybridSpace())
