"""`SearchSpace`: the choices of one block family, as data plus a few family rules.

A space has a fixed number of stages; each stage declares its width choices, how many block slots
it has, which block types a slot may hold, and the expansion and head-count choices of those
types (`StageChoices`). The generic checks, sampling and extremes live here; a family subclass
adds its rules (`check_rules`), the block layout of its largest network, and `layer_specs`, the
walk that turns an architecture into the ordered layers it runs.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from importlib import resources
from typing import Any, Sequence

import numpy as np

from search_spaces.architecture import (
    IDENTITY,
    IDENTITY_BLOCK,
    Architecture,
    ArchitectureError,
    Block,
    Stage,
)
from search_spaces.layers import LayerSpec


@dataclass(frozen=True)
class BlockType:
    """A registered block type and the knobs an architecture must give it.

    `has_expansion`: the block has an MLP whose hidden width is `expansion x width`;
    `has_heads`: the block's attention head count is part of the architecture;
    `has_kernel` / `has_sample_ratio`: its depthwise kernel size / its attention's sample ratio is
    a per-slot choice of the architecture (where a family fixes them per stage, the space passes
    them as layer options instead and the type has no such knob). A space holds its own
    `BlockType` records, so one registered block can have a knob in one space and not in another.
    """

    name: str
    has_expansion: bool
    has_heads: bool = False
    summary: str = ""
    has_kernel: bool = False
    has_sample_ratio: bool = False

    def knobs(self) -> tuple[str, ...]:
        """The `Block` fields this type needs, in `KNOBS` order."""
        flags = (self.has_expansion, self.has_heads, self.has_kernel, self.has_sample_ratio)
        return tuple(knob for knob, has in zip(KNOBS, flags) if has)


#: the per-slot knobs a `Block` may carry, in the order they are validated and drawn
KNOBS = ("expansion", "heads", "kernel", "sample_ratio")


IDENTITY_TYPE = BlockType(IDENTITY, has_expansion=False, summary="empty slot (skip connection)")


@dataclass(frozen=True)
class StageChoices:
    """What one stage of a space may be: width choices (ascending), slot count, block types.

    `block_types` lists the non-identity types a slot may hold (identity is always allowed);
    `expansions`, `heads`, `kernels` and `sample_ratios` are the choices of block types that have
    those knobs.
    """

    widths: tuple[int, ...]
    max_depth: int
    block_types: tuple[str, ...]
    expansions: tuple[int, ...] = ()
    heads: tuple[int, ...] = ()
    min_depth: int = 1
    kernels: tuple[int, ...] = ()
    sample_ratios: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if tuple(sorted(set(self.widths))) != tuple(self.widths) or not self.widths:
            raise ValueError(f"widths must be distinct and ascending, got {self.widths}")
        if not 1 <= self.min_depth <= self.max_depth:
            raise ValueError(f"need 1 <= min_depth <= max_depth, got {self.min_depth}, {self.max_depth}")


def width_range(start: int, stop: int, step: int) -> tuple[int, ...]:
    """Widths from `start` to `stop` inclusive in steps of `step`."""
    return tuple(range(start, stop + 1, step))


@dataclass
class LayerWalk:
    """Where the layer walk is in a network: the (height, width) and channels flowing into the next
    layer, and whether that tensor is a token sequence (EfficientFormer V1 after a `meta3d`)."""

    size: tuple[int, int]
    channels: int
    tokens: bool = False


class SearchSpace(abc.ABC):
    """A search space: stages of `StageChoices`, references, and the layer walk of its networks.

    Contract: `largest()`, `smallest()` and `sample(rng)` return architectures that `validate`
    accepts; `validate` raises `ArchitectureError` naming the offending field; `layer_specs(arch)`
    lists the layers the network runs in execution order (stem, per stage its downsample and its
    non-identity blocks, head), each with `where` set to its place in `build_model`'s module tree.
    The walk is the same for every space; a family only says what options its layers take
    (`downsample_options`, `block_options`, `head_options`). Nothing here mutates state: a space
    is immutable once registered.
    """

    #: registered name (`efficientformer_v2`)
    name: str
    #: block family that provides the blocks (module name under `search_spaces.families`)
    family: str
    #: one `StageChoices` per stage
    stages: tuple[StageChoices, ...]
    #: block types this space uses, by name
    block_types: dict[str, BlockType]
    default_resolution: int = 224
    default_num_classes: int = 1000
    #: input resolution must be a multiple of this (the network's total stride)
    resolution_multiple: int = 32
    #: paper / code this space follows, for `list`
    summary: str = ""
    #: total stride of the stem and of each downsample (layer kinds `<name>.stem` / `.downsample` / `.head`)
    stem_stride: int = 4
    downsample_stride: int = 2

    # -- the layer walk ----------------------------------------------------------------------
    def layer_specs(self, arch: Architecture) -> list[LayerSpec]:
        """The layers `arch` runs, in order; `arch` must be valid. Sizes divide exactly: the
        resolution is a multiple of the network's total stride."""
        size = (arch.resolution, arch.resolution)
        specs = [LayerSpec(f"{self.name}.stem", 3, arch.stages[0].width, size, stride=self.stem_stride, where="stem")]
        walk = LayerWalk((size[0] // self.stem_stride, size[1] // self.stem_stride), arch.stages[0].width)
        for index, stage in enumerate(arch.stages):
            if index > 0:
                specs.append(LayerSpec(f"{self.name}.downsample", walk.channels, stage.width, walk.size,
                                       stride=self.downsample_stride, options=self.downsample_options(index, walk),
                                       where=f"stages.{index}.downsample"))
                walk = LayerWalk((walk.size[0] // self.downsample_stride, walk.size[1] // self.downsample_stride),
                                 stage.width)  # a downsample always returns a map
            walk.channels = stage.width
            for slot, block in enumerate(stage.blocks):
                if block.is_identity:
                    continue
                specs.append(LayerSpec(block.type, stage.width, stage.width, walk.size, expansion=block.expansion,
                                       heads=block.heads, options=self.block_options(index, block, walk),
                                       where=f"stages.{index}.blocks.{slot}"))
        specs.append(LayerSpec(f"{self.name}.head", walk.channels, arch.num_classes, walk.size,
                               options=self.head_options(walk), where="head"))
        return specs

    def downsample_options(self, stage_index: int, walk: LayerWalk) -> tuple[tuple[str, Any], ...]:
        """Shape options of stage `stage_index`'s downsample, seeing the tensor that flows into it."""
        return ()

    def block_options(self, stage_index: int, block: Block, walk: LayerWalk) -> tuple[tuple[str, Any], ...]:
        """Shape options of a block of stage `stage_index`; may update `walk` (a block that turns
        the map into tokens sets `walk.tokens`)."""
        return ()

    def head_options(self, walk: LayerWalk) -> tuple[tuple[str, Any], ...]:
        """Shape options of the head, seeing the tensor that flows into it."""
        return ()

    # -- family hooks ------------------------------------------------------------------------
    def check_rules(self, arch: Architecture) -> None:  # noqa: B027 (optional hook: no rules by default)
        """Family rules beyond the per-stage choices; raise `ArchitectureError` with the path."""

    def largest_block_types(self, stage_index: int) -> tuple[str, ...]:
        """Block type of every slot of the largest network's stage (default: the first type)."""
        stage = self.stages[stage_index]
        return (stage.block_types[0],) * stage.max_depth

    def smallest_block_types(self, stage_index: int) -> tuple[str, ...]:
        """Block type of every slot of the smallest network's stage (default: the first type, min depth)."""
        stage = self.stages[stage_index]
        return (stage.block_types[0],) * stage.min_depth

    def sample_block_types(self, rng: np.random.Generator, stage_index: int, depth: int) -> tuple[str, ...]:
        """Types of a sampled stage's `depth` blocks (default: uniform per slot)."""
        choices = self.stages[stage_index].block_types
        return tuple(choices[int(i)] for i in rng.integers(0, len(choices), size=depth))

    def repair_sample(self, arch: Architecture) -> Architecture:
        """Turn a uniformly drawn architecture into a valid one (default: unchanged)."""
        return arch

    # -- generic -----------------------------------------------------------------------------
    def block_type(self, name: str) -> BlockType:
        if name == IDENTITY:
            return IDENTITY_TYPE
        return self.block_types[name]

    def _block(self, type_name: str, stage: StageChoices, width: int, pick: str, rng=None) -> Block:
        knobs = {knob: _pick(self.knob_choices(stage, width, knob), pick, rng)
                 for knob in self.block_type(type_name).knobs()}
        return Block(type_name, **knobs)

    @staticmethod
    def valid_heads(stage: StageChoices, width: int) -> tuple[int, ...]:
        return tuple(h for h in stage.heads if width % h == 0)

    @classmethod
    def knob_choices(cls, stage: StageChoices, width: int, knob: str) -> tuple[int, ...]:
        """The values `knob` (one of `KNOBS`) may take in `stage` at `width`."""
        if knob == "heads":
            return cls.valid_heads(stage, width)
        return {"expansion": stage.expansions, "kernel": stage.kernels, "sample_ratio": stage.sample_ratios}[knob]

    def _arch(self, stages: Sequence[Stage], resolution: int | None, num_classes: int | None) -> Architecture:
        return Architecture(
            self.name,
            resolution or self.default_resolution,
            num_classes or self.default_num_classes,
            tuple(stages),
        )

    def largest(self, resolution: int | None = None, num_classes: int | None = None) -> Architecture:
        """Widest, deepest, largest expansion; the block layout of the family's biggest model."""
        stages = []
        for index, stage in enumerate(self.stages):
            width = stage.widths[-1]
            types = self.largest_block_types(index)
            stages.append(Stage(width, tuple(self._block(t, stage, width, "max") for t in types)))
        return self._arch(stages, resolution, num_classes)

    def smallest(self, resolution: int | None = None, num_classes: int | None = None) -> Architecture:
        """Narrowest, shallowest, smallest expansion, cheapest (first-listed) block types."""
        stages = []
        for index, stage in enumerate(self.stages):
            width = stage.widths[0]
            types = self.smallest_block_types(index)
            stages.append(Stage(width, tuple(self._block(t, stage, width, "min") for t in types)))
        return self._arch(stages, resolution, num_classes)

    def sample(
        self, rng: np.random.Generator, resolution: int | None = None, num_classes: int | None = None
    ) -> Architecture:
        """A random architecture: width, depth, types and knobs uniform per stage and slot."""
        stages = []
        for index, stage in enumerate(self.stages):
            widths = [w for w in stage.widths if not stage.heads or self.valid_heads(stage, w)]
            width = widths[int(rng.integers(0, len(widths)))]
            depth = int(rng.integers(stage.min_depth, stage.max_depth + 1))
            types = self.sample_block_types(rng, index, depth)
            stages.append(Stage(width, tuple(self._block(t, stage, width, "random", rng) for t in types)))
        return self.repair_sample(self._arch(stages, resolution, num_classes))

    def heads_for(self, stage_index: int, width: int, block: Block) -> Block:
        """`block` with a head count valid at `width` in that stage: its own if still valid, else
        the largest valid one not above it (the smallest valid one if none is)."""
        if block.heads is None:
            return block
        valid = self.valid_heads(self.stages[stage_index], width)
        if block.heads in valid or not valid:
            return block
        below = [heads for heads in valid if heads <= block.heads]
        return dataclasses.replace(block, heads=max(below) if below else min(valid))

    def slimming_distance(self) -> int:
        """How many one-step reductions lead from the largest network to the smallest at most: per
        stage, every slot to identity, every width step, every expansion step of every slot."""
        return sum(
            (stage.max_depth - stage.min_depth) + (len(stage.widths) - 1) + stage.max_depth * max(len(stage.expansions) - 1, 0)
            for stage in self.stages
        )

    def sample_slimmed(
        self, rng: np.random.Generator, resolution: int | None = None, num_classes: int | None = None
    ) -> Architecture:
        """A random network of the region slimming searches end in: the largest network after k
        random one-step reductions (a block to identity, a stage's width or a block's expansion
        down one step; k uniform in 0..`slimming_distance()`), each kept only if the space
        contains the result. Uniform samples rarely look like that (deep stages, wide late
        stages, the family's block layout), so a calibration fitted on them alone misprices it."""
        arch = self.largest(resolution, num_classes)
        for _ in range(int(rng.integers(0, self.slimming_distance() + 1))):
            index = int(rng.integers(0, len(self.stages)))
            stage, choices = arch.stages[index], self.stages[index]
            blocks = list(stage.blocks)
            filled = [slot for slot, block in enumerate(blocks) if not block.is_identity]
            move = int(rng.integers(0, 3))
            width = stage.width
            if move == 0 and filled:
                blocks[filled[int(rng.integers(0, len(filled)))]] = IDENTITY_BLOCK
            elif move == 1 and choices.widths.index(width) > 0:
                width = choices.widths[choices.widths.index(width) - 1]
                blocks = [self.heads_for(index, width, block) for block in blocks]
            elif move == 2 and filled:
                slot = filled[int(rng.integers(0, len(filled)))]
                block = blocks[slot]
                if block.expansion in choices.expansions and choices.expansions.index(block.expansion) > 0:
                    blocks[slot] = dataclasses.replace(
                        block, expansion=choices.expansions[choices.expansions.index(block.expansion) - 1])
            candidate = arch.replace_stage(index, Stage(width, tuple(blocks)))
            if candidate != arch and self.contains(candidate):
                arch = candidate
        return arch

    def contains(self, arch: Architecture) -> bool:
        try:
            self.validate(arch)
        except ArchitectureError:
            return False
        return True

    def validate(self, arch: Architecture) -> Architecture:
        """Return `arch` if it is a point of this space, else raise `ArchitectureError` with the path."""
        if arch.space != self.name:
            raise ArchitectureError("space", f"{arch.space!r} is not this space ({self.name!r})")
        multiple = self.resolution_multiple
        if arch.resolution % multiple or arch.resolution < multiple:
            raise ArchitectureError("resolution", f"must be a positive multiple of {multiple}, got {arch.resolution}")
        if len(arch.stages) != len(self.stages):
            raise ArchitectureError("stages", f"{self.name} has {len(self.stages)} stages, got {len(arch.stages)}")
        for index, (stage, choices) in enumerate(zip(arch.stages, self.stages)):
            self._validate_stage(f"stages[{index}]", index, stage, choices)
        self.check_rules(arch)
        return arch

    def _validate_stage(self, path: str, index: int, stage: Stage, choices: StageChoices) -> None:
        if stage.width not in choices.widths:
            raise ArchitectureError(f"{path}.width", f"{stage.width} is not one of {_choices(choices.widths)}")
        if len(stage.blocks) > choices.max_depth:
            raise ArchitectureError(
                f"{path}.blocks", f"{len(stage.blocks)} slots, but stage {index + 1} has at most {choices.max_depth}"
            )
        if stage.depth < choices.min_depth:
            raise ArchitectureError(
                f"{path}.blocks", f"depth {stage.depth}, but stage {index + 1} needs at least {choices.min_depth} block(s)"
            )
        allowed = (*choices.block_types, IDENTITY)
        for slot, block in enumerate(stage.blocks):
            block_path = f"{path}.blocks[{slot}]"
            if block.type not in allowed:
                raise ArchitectureError(f"{block_path}.type", f"{block.type!r} is not one of {list(allowed)}")
            block_type = self.block_type(block.type)
            self._validate_knob(block_path, "expansion", block.expansion, block_type.has_expansion, block.type, choices.expansions)
            heads = self.valid_heads(choices, stage.width) if block_type.has_heads else ()
            if block_type.has_heads and block.heads is not None and block.heads in choices.heads and block.heads not in heads:
                raise ArchitectureError(
                    f"{block_path}.heads", f"width {stage.width} is not divisible by {block.heads} heads; valid: {_choices(heads)}"
                )
            self._validate_knob(block_path, "heads", block.heads, block_type.has_heads, block.type, choices.heads)
            self._validate_knob(block_path, "kernel", block.kernel, block_type.has_kernel, block.type, choices.kernels)
            self._validate_knob(block_path, "sample_ratio", block.sample_ratio, block_type.has_sample_ratio, block.type,
                                choices.sample_ratios)

    @staticmethod
    def _validate_knob(path: str, knob: str, value, has_knob: bool, type_name: str, options) -> None:
        if has_knob and value is None:
            raise ArchitectureError(f"{path}.{knob}", f"missing; {type_name} blocks need one of {_choices(options)}")
        if not has_knob and value is not None:
            raise ArchitectureError(f"{path}.{knob}", f"{type_name} blocks take no {knob}")
        if has_knob and value not in options:
            raise ArchitectureError(f"{path}.{knob}", f"{value} is not one of {_choices(options)}")

    # -- references --------------------------------------------------------------------------
    def references(self) -> tuple[str, ...]:
        """Names of the reference variants shipped with this space."""
        folder = resources.files("search_spaces.references").joinpath(self.name)
        if not folder.is_dir():
            return ()
        return tuple(sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")))

    def reference(self, name: str) -> Architecture:
        """A reference variant (`space.reference("s0")`) as an `Architecture` of this space."""
        names = self.references()
        if name not in names:
            raise KeyError(f"{self.name} has no reference {name!r}; references: {', '.join(names) or 'none'}")
        text = resources.files("search_spaces.references").joinpath(self.name, f"{name}.yaml").read_text("utf-8")
        return self.validate(Architecture.from_yaml(text))

    def __repr__(self) -> str:
        return f"<SearchSpace {self.name}: {len(self.stages)} stages>"


def _pick(options: Sequence[int], pick: str, rng) -> int:
    if not options:
        raise ValueError("no choices to pick from")
    if pick == "max":
        return max(options)
    if pick == "min":
        return min(options)
    return options[int(rng.integers(0, len(options)))]


def _choices(values: Sequence[int]) -> str:
    values = list(values)
    if len(values) > 8:
        steps = {b - a for a, b in zip(values, values[1:])}
        if len(steps) == 1:
            return f"{values[0]}..{values[-1]} in steps of {steps.pop()}"
    return "[" + ", ".join(str(v) for v in values) + "]"
