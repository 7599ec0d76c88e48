"""The static network every architecture builds into: stem, stages (downsample + block slots), head.

`build_model(arch)` walks `space.layer_specs(arch)` and builds each spec with `build_layer`, so the
modules of a network are exactly the units a latency table profiles and `count_params` prices.
Identity slots become `nn.Identity` so every real block keeps its slot index (`stages.2.blocks.4`),
which is what lets the supernet's extracted weights load into `build_model(arch)`.
"""

from __future__ import annotations

import torch
from torch import nn

from search_spaces.architecture import Architecture
from search_spaces.layers import LayerSpec, build_layer
from search_spaces.ops import Ops


class NetworkStage(nn.Module):
    """One stage: an optional downsample followed by its block slots."""

    def __init__(self, downsample: nn.Module, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        for block in self.blocks:
            x = block(x)
        return x


class Network(nn.Module):
    """A classification network: `head(stages(stem(images)))`, logits of shape (batch, classes)."""

    def __init__(self, stem: nn.Module, stages: list[NetworkStage], head: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)

    def place(self, where: str) -> nn.Module:
        """The module at a spec's `where` ("stem", "head", "stages.<i>.downsample", "stages.<i>.blocks.<j>")."""
        if where in ("stem", "head"):
            return getattr(self, where)
        parts = where.split(".")
        if len(parts) < 3 or parts[0] != "stages":
            raise KeyError(f"no place {where!r} in a network")
        stage = self.stages[int(parts[1])]
        return stage.downsample if parts[2] == "downsample" else stage.blocks[int(parts[3])]


def assemble(arch: Architecture, specs: list[LayerSpec], make) -> Network:
    """Place `make(spec)` for each spec where its `where` says; identity slots become nn.Identity.

    `make` builds one layer; `build_model` passes `build_layer`, the supernet its extraction.
    """
    stem = head = None
    downsamples: dict[int, nn.Module] = {}
    blocks: dict[tuple[int, int], nn.Module] = {}
    for spec in specs:
        parts = spec.where.split(".")
        if parts == ["stem"]:
            stem = make(spec)
        elif parts == ["head"]:
            head = make(spec)
        elif len(parts) == 3 and parts[0] == "stages" and parts[2] == "downsample":
            downsamples[int(parts[1])] = make(spec)
        elif len(parts) == 4 and parts[0] == "stages" and parts[2] == "blocks":
            blocks[int(parts[1]), int(parts[3])] = make(spec)
        else:
            raise ValueError(f"layer spec {spec.key()} has no valid place ({spec.where!r})")
    if stem is None or head is None:
        raise ValueError(f"{arch.space}: layer_specs gave no stem or no head")
    stages = []
    for index, stage in enumerate(arch.stages):
        slots = [blocks.pop((index, slot), nn.Identity()) for slot in range(len(stage.blocks))]
        stages.append(NetworkStage(downsamples.pop(index, nn.Identity()), slots))
    if blocks or downsamples:
        raise ValueError(f"{arch.space}: layer specs placed outside the architecture's stages")
    return Network(stem, stages, head)


def build_model(arch: Architecture, ops: Ops | None = None) -> Network:
    """The static `torch.nn.Module` of `arch` (validated first), randomly initialised."""
    from search_spaces.registry import get_space

    space = get_space(arch.space)
    space.validate(arch)
    return assemble(arch, space.layer_specs(arch), lambda spec: build_layer(spec, ops))
