"""Which layers each place of a supernet must be able to become.

A supernet place (the stem, a stage's downsample, a block slot, the head) runs one layer kind at a
time but many sizes of it. To build it once at the largest size, with a BatchNorm for every width
it will meet, the supernet needs the layer specs that place can take. They are found by walking
probe architectures through the family's own `layer_specs`, so no family rule is restated here:
every width of every stage with every block type, expansion and head count, and every pair of
neighbouring stage widths (downsamples depend on both).

Shapes are read from "twins": the static module of a spec built on the meta device (no memory,
no initialisation), cached by spec key.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from search_spaces import Architecture, Block, LayerSpec, SearchSpace, Stage, build_layer


@functools.lru_cache(maxsize=8192)
def _twin_by_key(spec: LayerSpec) -> nn.Module:
    with torch.device("meta"):
        return build_layer(spec)


def twin(spec: LayerSpec) -> nn.Module:
    """The static module of `spec` on the meta device (shapes only), shared and cached."""
    return _twin_by_key(spec)


def place_key(spec: LayerSpec) -> tuple[str, str]:
    """A supernet place holds one module per layer kind: (where, kind)."""
    return spec.where, spec.kind


@dataclass(frozen=True)
class PlaceCandidates:
    """Every spec one (place, kind) of a space can take, and the one the supernet builds.

    `largest` dominates every other candidate's tensor shapes, so each candidate is a prefix slice of it.
    """

    where: str
    kind: str
    specs: tuple[LayerSpec, ...]
    largest: LayerSpec


def _restage(space: SearchSpace, arch: Architecture, index: int, width: int) -> Architecture:
    """`arch` with stage `index` at `width`, head counts re-chosen so they divide the new width."""
    stage, choices = arch.stages[index], space.stages[index]
    blocks = []
    for block in stage.blocks:
        if block.heads is not None:
            valid = space.valid_heads(choices, width)
            block = Block(block.type, block.expansion, max(valid) if valid else block.heads)
        blocks.append(block)
    return arch.replace_stage(index, Stage(width, tuple(blocks)))


def probe_architectures(space: SearchSpace, resolution: int, num_classes: int) -> list[Architecture]:
    """Valid architectures that together show every spec each place of the space can take."""
    base = space.largest(resolution, num_classes)
    probes = [base, space.smallest(resolution, num_classes)]
    for index, choices in enumerate(space.stages):
        for width in choices.widths:
            for type_name in choices.block_types:
                block_type = space.block_type(type_name)
                expansions = choices.expansions if block_type.has_expansion else (None,)
                heads = space.valid_heads(choices, width) if block_type.has_heads else (None,)
                for expansion in expansions:
                    for head_count in heads:
                        stage = Stage(width, (Block(type_name, expansion, head_count),) * choices.max_depth)
                        probes.append(base.replace_stage(index, stage))
        if index:
            for previous_width in space.stages[index - 1].widths:
                for width in choices.widths:
                    probes.append(_restage(space, _restage(space, base, index - 1, previous_width), index, width))
    valid = []
    for arch in probes:
        if not space.contains(arch):
            arch = space.repair_sample(arch)
        if space.contains(arch):
            valid.append(arch)
    return valid


def _size_rank(spec: LayerSpec) -> tuple[int, ...]:
    return (spec.out_channels, spec.in_channels, spec.expansion or 0, spec.heads or 0)


@functools.lru_cache(maxsize=32)
def place_candidates(space: SearchSpace, resolution: int, num_classes: int) -> dict[tuple[str, str], PlaceCandidates]:
    """For every (place, kind) of the space at this resolution: its candidate specs and the largest."""
    by_place: dict[tuple[str, str], dict[str, LayerSpec]] = {}
    for arch in probe_architectures(space, resolution, num_classes):
        for spec in space.layer_specs(arch):
            by_place.setdefault(place_key(spec), {}).setdefault(spec.key(), spec)
    result = {}
    for (where, kind), specs in by_place.items():
        ordered = tuple(specs.values())
        largest = max(ordered, key=_size_rank)
        result[where, kind] = PlaceCandidates(where, kind, ordered, largest)
    return result
