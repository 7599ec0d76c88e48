"""Slimming actions: small, valid steps from an architecture towards a cheaper one.

Generated for any space from its declared `StageChoices`; only actions whose result the space
`contains` are returned, in a fixed order (so the search is deterministic).

- V2 set (`v2_actions`): drop one block (the slot becomes identity), one stage's width down one
  step (heads adjusted to a valid count when the block type has heads), one block's expansion down
  one step.
- V1 set (`v1_actions`, `V1Actions`): the least important MetaPath (block) to identity, by the
  importance a Gumbel-trained supernet learned (`supernet.importance`); the first attention-style
  block (V1: `meta3d`) to its stage's conv-style type (V1: the 4D partition `meta4d`); the least
  important stage's width down one step.
- V2 set with block types (`v2_type_actions`): the V2 set, plus per stage and per block type the
  stage allows, the stage's last block of another type turned into that type (`type_actions`).
  For spaces whose slots choose among block types (`hybrid`): the V2 set alone only slims the
  largest network's own types, so a greedy search could never pick any other.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from search_spaces import Architecture, Block, SearchSpace, Stage
from supernet.importance import MetaPathImportance

IDENTITY = "identity"


@dataclass(frozen=True)
class TypeSwap:
    """What a block-type action (`type_actions`, or a compound of them) turns blocks into: the
    stage index and the variant's name (`type[knob=value,...]`)."""

    stage: int
    variant: str


@dataclass(frozen=True)
class Action:
    """One named step (`apply` maps an architecture to the stepped one). `group` names the kind of
    step and the stage it acts on (V2: `drop s2`, `width s2`, `expansion s2`): the actions that
    `compound` may continue an action with. Empty: the action is a group of its own. `swap`: for a
    block-type swap, what it turns blocks into (None for every other action)."""

    name: str
    description: str
    _apply: Callable[[Architecture], Architecture] = dataclasses.field(compare=False, repr=False)
    group: str = ""
    swap: TypeSwap | None = None

    def apply(self, arch: Architecture) -> Architecture:
        return self._apply(arch)

    @property
    def kind(self) -> str:
        return self.group or self.name


def _set_block(arch: Architecture, stage: int, slot: int, block: Block) -> Architecture:
    old = arch.stages[stage]
    blocks = list(old.blocks)
    blocks[slot] = block
    return arch.replace_stage(stage, Stage(old.width, tuple(blocks)))


def _width_down(space: SearchSpace, arch: Architecture, stage_index: int) -> Architecture | None:
    choices = space.stages[stage_index]
    stage = arch.stages[stage_index]
    if stage.width not in choices.widths:
        return None
    position = choices.widths.index(stage.width)
    if position == 0:
        return None
    width = choices.widths[position - 1]
    blocks = tuple(space.heads_for(stage_index, width, b) for b in stage.blocks)
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
                                  lambda a, s=s, slot=slot: _set_block(a, s, slot, Block(IDENTITY)), f"drop s{s}"))
    for s in range(len(arch.stages)):
        if _width_down(space, arch, s) is not None:
            actions.append(Action(f"width s{s}", f"stage {s} width down one step",
                                  lambda a, s=s: _width_down(space, a, s), f"width s{s}"))
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
                                  lambda a, s=s, slot=slot, b=smaller: _set_block(a, s, slot, b), f"expansion s{s}"))
    return _keep_valid(space, arch, actions)


def type_actions(space: SearchSpace, arch: Architecture) -> list[Action]:
    """Per stage and per non-identity block type the stage allows: the stage's last block of
    another type (not identity) turned into that type, once per variant of the type (`_type_variants`:
    the block's knobs kept where the type has them and they are valid, every valid choice of the
    others, e.g. each conv-encoder kernel), in stage order, then the stage's type order. One slot
    per stage, type and variant, so a step offers a few candidates per stage, not one per slot;
    `compound` continues one with the next block of the stage into the same variant (its group is
    `VARIANT sS`; its `swap` says the same as data). Whether a swap saves anything is the objective's business: a swap to a dearer
    block gains nothing and is never chosen."""
    actions: list[Action] = []
    for s, stage in enumerate(arch.stages):
        types = [name for name in space.stages[s].block_types if name != IDENTITY]
        for type_name in types if len(types) > 1 else ():
            others = [slot for slot, block in enumerate(stage.blocks) if not block.is_identity and block.type != type_name]
            if not others:
                continue
            slot, block = others[-1], stage.blocks[others[-1]]
            for variant, new in _type_variants(space, s, stage.width, block, type_name):
                actions.append(Action(f"{block.type}->{variant} s{s}b{slot}", f"stage {s} block {slot} {block.type} -> {variant}",
                                      lambda a, s=s, slot=slot, b=new: _set_block(a, s, slot, b), f"{variant} s{s}",
                                      TypeSwap(s, variant)))
    return _keep_valid(space, arch, actions)


def _type_variants(space: SearchSpace, stage_index: int, width: int, block: Block, type_name: str) -> list[tuple[str, Block]]:
    """`block` as `type_name`, one per combination of the knobs it cannot keep (the type's knobs
    the block lacks or holds an invalid value of), each named `type[knob=value,...]` (just `type`
    when every knob is kept)."""
    kept, free = _knobs_as_type(space, stage_index, width, block, type_name)
    variants = []
    for values in itertools.product(*free.values()):
        chosen = dict(zip(free, values, strict=True))
        label = ",".join(f"{knob}={value}" for knob, value in chosen.items())
        variants.append((f"{type_name}[{label}]" if label else type_name, Block(type_name, **kept, **chosen)))
    return variants


def v2_type_actions(space: SearchSpace, arch: Architecture) -> list[Action]:
    """The V2 steps (`v2_actions`), then the block-type steps (`type_actions`)."""
    return v2_actions(space, arch) + type_actions(space, arch)


def v1_actions(space: SearchSpace, arch: Architecture, importance: MetaPathImportance | None = None) -> list[Action]:
    """The V1 steps from `arch` (at most three), under the MetaPath `importance` of a trained supernet:

    1. the least important MetaPath holding a block -> identity (ties: the later slot of the
       deeper stage);
    2. the first attention-style block (a block whose type is not its stage's first, conv-style
       type: V1 `meta3d`, V2 `attn_ffn`, EdgeNeXt `sdta`) -> the stage's first type (V1: the 4D
       partition);
    3. the least important stage (mean slot importance) that can still narrow: width down one step.

    Without `importance` every slot and stage counts as equally important, so ties decide: the
    last block of the deepest stage, and the first stage that can narrow.
    """
    actions: list[Action] = []

    def slot_value(key: tuple[int, int]) -> float:
        return importance.slots.get(key, 1.0) if importance is not None else 1.0

    slots = [(s, slot) for s, stage in enumerate(arch.stages) for slot, b in enumerate(stage.blocks) if not b.is_identity]
    removable = [key for key in sorted(slots, key=lambda key: (slot_value(key), -key[0], -key[1]))
                 if space.contains(_set_block(arch, key[0], key[1], Block(IDENTITY)))]
    if removable:
        s, slot = removable[0]
        actions.append(Action(f"metapath s{s}b{slot}", f"least important MetaPath (stage {s} block {slot}) -> identity",
                              lambda a, s=s, slot=slot: _set_block(a, s, slot, Block(IDENTITY))))
    for s, slot in sorted(slots):
        block, conv_type = arch.stages[s].blocks[slot], space.stages[s].block_types[0]
        if block.type == conv_type:
            continue
        new = _as_type(space, s, arch.stages[s].width, block, conv_type)
        if space.contains(_set_block(arch, s, slot, new)):
            actions.append(Action(f"{block.type}->{conv_type} s{s}b{slot}",
                                  f"first {block.type} (stage {s} block {slot}) -> {conv_type}",
                                  lambda a, s=s, slot=slot, b=new: _set_block(a, s, slot, b)))
            break
    narrowable = [s for s in range(len(arch.stages))
                  if (narrowed := _width_down(space, arch, s)) is not None and space.contains(narrowed)]
    stage = importance.least_important_stage(narrowable) if importance is not None else (narrowable or [None])[0]
    if stage is not None:
        actions.append(Action(f"width s{stage}", f"least important stage ({stage}) width down one step",
                              lambda a, s=stage: _width_down(space, a, s)))
    return _keep_valid(space, arch, actions)


def compound(space: SearchSpace, arch: Architecture, action: Action, actions: "ActionSet",
             saving: Callable[[Architecture], float], min_saving: float, max_parts: int = 256) -> Action:
    """`action` from `arch`, continued with actions of its group (`Action.group`) until the result
    saves at least `min_saving` (`saving(result)`: what it gains over `arch`, e.g. predicted ms) or
    the group offers nothing that saves more; `action` itself when it alone saves enough.

    The continuation is the next action of the group after the last one applied, in the set's
    order, wrapping around: a stage's width narrows step by step, its blocks are dropped one after
    another, its expansions are cut one block at a time across the stage (and then again). Why: a
    greedy step compares actions by accuracy drop per unit saved, and with a noisy evaluator the
    drop of a tiny action (a 0.01 ms expansion cut) is noise, so tiny actions either win by their
    noise (the plain ratio) or never (a drop floor, `nas.greedy.floored_ratio`, hands every
    noise-sized step to the action that saves the most, a block drop). Compounded to one size,
    every kind of step competes on a drop large enough to measure.
    """
    result = action.apply(arch)
    if saving(result) >= min_saving:
        return action
    order = {candidate.name: i for i, candidate in enumerate(actions(space, arch))}
    parts = [action]
    while saving(result) < min_saving and len(parts) < max_parts:
        offered = [a for a in actions(space, result) if a.kind == action.kind]
        last = order.get(parts[-1].name, len(order))
        following = [a for a in offered if order.get(a.name, len(order)) > last]
        if not offered:
            break
        step = (following or offered)[0]
        stepped = step.apply(result)
        if saving(stepped) <= saving(result):
            break
        parts.append(step)
        result = stepped
    if len(parts) == 1:
        return action
    names = [part.name for part in parts]
    if len(set(names)) == 1:
        name = f"{names[0]} x{len(names)}"
    else:
        prefix = action.group if action.group and all(n.startswith(action.group) for n in names) else ""
        name = prefix + " " + ",".join(n[len(prefix):] for n in names) if prefix else " + ".join(names)
    steps = tuple(parts)

    def apply(a: Architecture) -> Architecture:
        for part in steps:
            a = part.apply(a)
        return a

    return Action(name, "; ".join(part.description for part in parts), apply, action.group, action.swap)


def _knobs_as_type(space: SearchSpace, stage_index: int, width: int, block: Block,
                   type_name: str) -> tuple[dict[str, Any], dict[str, tuple]]:
    """`type_name`'s knobs split into those `block` keeps (it has them with a valid value) and the
    others, with their valid choices at `width`."""
    choices, kept, free = space.stages[stage_index], {}, {}
    for knob in space.block_type(type_name).knobs():
        valid = space.knob_choices(choices, width, knob)
        if getattr(block, knob) in valid:
            kept[knob] = getattr(block, knob)
        else:
            free[knob] = valid
    return kept, free


def _as_type(space: SearchSpace, stage_index: int, width: int, block: Block, type_name: str) -> Block:
    """`block` turned into `type_name`, keeping its knobs (expansion, heads, kernel, sample ratio)
    where the new type has them and they are valid, else taking the largest choice."""
    kept, free = _knobs_as_type(space, stage_index, width, block, type_name)
    return Block(type_name, **kept, **{knob: max(valid) for knob, valid in free.items()})


def supports_v1_actions(space: SearchSpace) -> bool:
    """Whether the space has MetaPaths of several block types (what V1's importance ranks)."""
    return any(len(stage.block_types) > 1 for stage in space.stages)


class ActionSet(Protocol):
    """Every valid step from an architecture, in a fixed order (the greedy controller's moves)."""

    def __call__(self, space: SearchSpace, arch: Architecture) -> Sequence[Action]: ...


@dataclass(frozen=True)
class V1Actions:
    """EfficientFormer V1's action set (`v1_actions`) under one trained `importance`."""

    importance: MetaPathImportance

    def __call__(self, space: SearchSpace, arch: Architecture) -> list[Action]:
        return v1_actions(space, arch, self.importance)

    def settings(self) -> dict[str, Any]:
        return {"name": "v1", "importance": self.importance.to_dict()}


ACTION_SET_NAMES = ("v1", "v2", "v2-types")
