"""Slimming actions: small, valid steps from an architecture towards a cheaper one.

Generated for any space from its declared `StageChoices`; only actions whose result the space
`contains` are returned, in a fixed order (so the search is deterministic).

- V2 set (`v2_actions`): drop one block (the slot becomes identity), one stage's width down one
  step (heads adjusted to a valid count when the block type has heads), one block's expansion down
  one step.
- V1 set (`v1_actions`): the least important MetaPath (block) to identity, using given importance
  scores (the trained α; without scores, the last block of the deepest stage); the first `meta3d`
  to the 4D partition (`meta4d`); the least important stage's width down one step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Mapping

from search_spaces import Architecture, Block, SearchSpace, Stage

IDENTITY = "identity"


@dataclass(frozen=True)
class Action:
    name: str
    description: str
    _apply: Callable[[Architecture], Architecture] = dataclasses.field(compare=False, repr=False)

    def apply(self, arch: Architecture) -> Architecture:
        return self._apply(arch)


def _set_block(arch: Architecture, stage: int, slot: int, block: Block) -> Architecture:
    old = arch.stages[stage]
    blocks = list(old.blocks)
    blocks[slot] = block
    return arch.replace_stage(stage, Stage(old.width, tuple(blocks)))


def _fix_heads(space: SearchSpace, stage_index: int, width: int, block: Block) -> Block:
    if block.heads is None:
        return block
    valid = space.valid_heads(space.stages[stage_index], width)
    if block.heads in valid or not valid:
        return block
    below = [h for h in valid if h <= block.heads]
    return dataclasses.replace(block, heads=max(below) if below else min(valid))


def _width_down(space: SearchSpace, arch: Architecture, stage_index: int) -> Architecture | None:
    choices = space.stages[stage_index]
    stage = arch.stages[stage_index]
    if stage.width not in choices.widths:
        return None
    position = choices.widths.index(stage.width)
    if position == 0:
        return None
    width = choices.widths[position - 1]
    blocks = tuple(_fix_heads(space, stage_index, width, b) for b in stage.blocks)
    return arch.replace_stage(stage_index, Stage(width, blocks))


def _keep_valid(space: SearchSpace, arch: Architecture, actions: list[Action]) -> list[Action]:
    return [action for action in actions if space.contains(action.apply(arch))]


def v2_actions(space: SearchSpace, arch: Architecture) -> list[Action]:
    """Every valid V2 step from `arch`: drop a block, a stage's width down, a block's expansion down."""
    actions: list[Action] = []
    for s, stage in enumerate(arch.stages):
        for slot, block in enumerate(stage.blocks):
            if block.is_identity:
                continue
            actions.append(Action(f"drop s{s}b{slot}", f"stage {s} block {slot} ({block.type}) -> identity",
                                  lambda a, s=s, slot=slot: _set_block(a, s, slot, Block(IDENTITY))))
    for s in range(len(arch.stages)):
        if _width_down(space, arch, s) is not None:
            actions.append(Action(f"width s{s}", f"stage {s} width down one step",
                                  lambda a, s=s: _width_down(space, a, s)))
    for s, stage in enumerate(arch.stages):
        expansions = space.stages[s].expansions
        for slot, block in enumerate(stage.blocks):
            if block.expansion is None or block.expansion not in expansions:
                continue
            position = expansions.index(block.expansion)
            if position == 0:
                continue
            smaller = dataclasses.replace(block, expansion=expansions[position - 1])
            actions.append(Action(f"expansion s{s}b{slot}", f"stage {s} block {slot} expansion {block.expansion} -> {smaller.expansion}",
                                  lambda a, s=s, slot=slot, b=smaller: _set_block(a, s, slot, b)))
    return _keep_valid(space, arch, actions)


def v1_actions(space: SearchSpace, arch: Architecture,
               importance: Mapping[tuple[int, int], float] | None = None,
               stage_importance: Mapping[int, float] | None = None) -> list[Action]:
    """The V1 steps from `arch` (at most three): least important MetaPath -> identity, first
    `meta3d` -> `meta4d`, least important stage's width down one step.

    `importance[(stage, slot)]` is a block's importance (the trained α); without it, later slots of
    deeper stages count as less important. `stage_importance[stage]` likewise (default: the sum of
    its blocks' importance; without any scores, the widest stage is cut first).
    """
    actions: list[Action] = []
    slots = [(s, slot) for s, stage in enumerate(arch.stages) for slot, b in enumerate(stage.blocks) if not b.is_identity]
    def block_key(key: tuple[int, int]) -> tuple:
        if importance is not None and key in importance:
            return (importance[key], -key[0], -key[1])
        return (0.0, -key[0], -key[1])
    removable = [key for key in sorted(slots, key=block_key)
                 if space.contains(_set_block(arch, key[0], key[1], Block(IDENTITY)))]
    if removable:
        s, slot = removable[0]
        actions.append(Action(f"metapath s{s}b{slot}", f"least important MetaPath (stage {s} block {slot}) -> identity",
                              lambda a, s=s, slot=slot: _set_block(a, s, slot, Block(IDENTITY))))
    for s, slot in sorted((s, slot) for s, slot in slots):
        block = arch.stages[s].blocks[slot]
        if block.type == "meta3d" and "meta4d" in space.stages[s].block_types:
            new = dataclasses.replace(block, type="meta4d", heads=None)
            if space.contains(_set_block(arch, s, slot, new)):
                actions.append(Action(f"meta3d->4d s{s}b{slot}", f"first meta3d (stage {s} block {slot}) -> 4D partition",
                                      lambda a, s=s, slot=slot, b=new: _set_block(a, s, slot, b)))
                break
    def stage_key(s: int) -> tuple:
        if stage_importance is not None and s in stage_importance:
            return (stage_importance[s], s)
        if importance is not None:
            return (sum(importance.get((s, slot), 0.0) for slot in range(len(arch.stages[s].blocks))), s)
        return (-arch.stages[s].width, s)
    for s in sorted(range(len(arch.stages)), key=stage_key):
        result = _width_down(space, arch, s)
        if result is not None and space.contains(result):
            actions.append(Action(f"width s{s}", f"least important stage ({s}) width down one step",
                                  lambda a, s=s: _width_down(space, a, s)))
            break
    return _keep_valid(space, arch, actions)


ACTION_SETS = {"v1": v1_actions, "v2": v2_actions}
