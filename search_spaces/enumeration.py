"""Every layer spec a space can run, found by walking probe architectures through `layer_specs`.

Both the supernet (which must hold every size a place can take) and the latency-table builder
(which must price every spec) need this set. Instead of restating each family's rules, probe
architectures exercise them: from the largest network, one stage at a time takes every width,
block type, expansion and head count, and every pair of neighbouring stage widths meets every
block type of the previous stage (a downsample depends on both widths and on the layout the
previous stage ends in: EfficientFormer V1 leaves tokens after a `meta3d`). Each probe is made
valid by the family's own `repair_sample` or dropped.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Sequence

from search_spaces.architecture import Architecture, Block, Stage
from search_spaces.layers import LayerSpec
from search_spaces.space import SearchSpace


def _restage(space: SearchSpace, arch: Architecture, index: int, width: int) -> Architecture:
    """`arch` with stage `index` at `width`, head counts re-chosen so they divide the new width."""
    stage, choices = arch.stages[index], space.stages[index]
    blocks = []
    for block in stage.blocks:
        if block.heads is not None:
            valid = space.valid_heads(choices, width)
            block = dataclasses.replace(block, heads=max(valid) if valid else block.heads)
        blocks.append(block)
    return arch.replace_stage(index, Stage(width, tuple(blocks)))


def _fill(space: SearchSpace, arch: Architecture, index: int, type_name: str) -> Architecture:
    """`arch` with every slot of stage `index` holding `type_name` (largest knobs)."""
    choices, width = space.stages[index], arch.stages[index].width
    knobs = {}
    for knob in space.block_type(type_name).knobs():
        values = space.knob_choices(choices, width, knob)
        knobs[knob] = max(values) if values else None
    return arch.replace_stage(index, Stage(width, (Block(type_name, **knobs),) * choices.max_depth))


def _blocks_of(space: SearchSpace, index: int, width: int, type_name: str) -> list[Block]:
    """Every block of `type_name` stage `index` allows at `width`: each combination of its knobs."""
    choices = space.stages[index]
    knobs = space.block_type(type_name).knobs()
    values = [space.knob_choices(choices, width, knob) for knob in knobs]
    return [Block(type_name, **dict(zip(knobs, combination))) for combination in itertools.product(*values)]


def probe_architectures(
    space: SearchSpace, resolution: int, num_classes: int, widths: Sequence[Sequence[int]] | None = None
) -> list[Architecture]:
    """Valid architectures that together run every spec the space (restricted to `widths`) can take.

    Start from the largest network, vary one stage at a time over width x block type x every
    combination of the type's knobs (expansion, heads, kernel, sample ratio), and every pair of neighbouring widths with the previous stage filled by each of its
    block types. `widths[i]` restricts stage i (None: all its widths).
    """
    allowed = [tuple(widths[i]) if widths else choices.widths for i, choices in enumerate(space.stages)]
    base = space.largest(resolution, num_classes)
    for index, stage_widths in enumerate(allowed):
        base = _restage(space, base, index, stage_widths[-1])
    probes = [base]
    for index, choices in enumerate(space.stages):
        for width in allowed[index]:
            for type_name in choices.block_types:
                for block in _blocks_of(space, index, width, type_name):
                    probes.append(base.replace_stage(index, Stage(width, (block,) * choices.max_depth)))
        if index:
            # a downsample depends on both widths and on the layout the previous stage ends in
            # (EfficientFormer V1: tokens after a meta3d block), so each pair meets every fill type
            for fill in space.stages[index - 1].block_types:
                filled = _fill(space, base, index - 1, fill)
                for previous_width in allowed[index - 1]:
                    for width in allowed[index]:
                        probes.append(_restage(space, _restage(space, filled, index - 1, previous_width), index, width))
    valid = []
    for arch in probes:
        if not space.contains(arch):
            arch = space.repair_sample(arch)
        if space.contains(arch):
            valid.append(arch)
    return valid


def enumerate_specs(
    space: SearchSpace, resolution: int, num_classes: int | None = None, widths: Sequence[Sequence[int]] | None = None
) -> dict[str, LayerSpec]:
    """Every distinct spec of the space at `resolution`, by key, in first-seen order."""
    num_classes = num_classes or space.default_num_classes
    distinct: dict[str, LayerSpec] = {}
    for arch in probe_architectures(space, resolution, num_classes, widths):
        for spec in space.layer_specs(arch):
            distinct.setdefault(spec.key(), spec)
    return distinct
