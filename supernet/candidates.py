"""Which layers each place of a supernet must be able to become.

A supernet place (the stem, a stage's downsample, a block slot, the head) runs one layer kind at a
time but many sizes of it. To build it once at the largest size, with a BatchNorm for every width
it will meet, the supernet needs the layer specs that place can take: those of
`search_spaces.enumeration.probe_architectures`, grouped by place.

Shapes are read from "twins": the static module of a spec built on the meta device (no memory,
no initialisation), cached by spec key.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from search_spaces import LayerSpec, SearchSpace, build_layer
from search_spaces.enumeration import probe_architectures


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


def _size_rank(spec: LayerSpec) -> tuple[int, ...]:
    # kernel and sample ratio (`sr`: the kernel of EdgeViT's propagation) grow the weights too,
    # where a space makes them per-slot choices; elsewhere they are constant per place
    kernel, ratio = spec.option("kernel", 0), spec.option("sr", 0)
    return (spec.out_channels, spec.in_channels, spec.expansion or 0, spec.heads or 0, int(kernel), int(ratio))


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
