"""BatchNorm widths no training step updated, found and estimated once per supernet.

A switchable BatchNorm keeps one BatchNorm per width (`supernet.elastic.SwitchableBatchNorm2d`).
Training updates only the widths the sampled sub-networks ran. A Gumbel-trained supernet runs its
largest widths alone; a sandwich-trained one leaves the rare ones, such as the hidden widths of the
deepest slots that only deep draws reach (225 of the 7,263 norm widths of the search studies'
5-epoch V2 supernet). A sub-network that runs such a width normalises with the initial statistics
(mean 0, variance 1), and its score means nothing.

Two ways to handle it:
- per candidate: `untrained_batch_norms(supernet, arch)` finds the ones a sub-network runs, and the
  evaluator re-estimates the whole sub-network's statistics on calibration images. This is exact,
  but it costs a calibration pass per candidate, and such candidates are then scored with other
  statistics than their neighbours;
- once per supernet: `estimate_untrained_norms(supernet, images)` gives every untrained width
  statistics, estimated in a sub-network that runs it, and leaves every trained width's statistics
  as they are. Afterwards every sub-network is scored on the supernet's shared statistics.

How the once-per-supernet estimate reaches every untrained width. Which (norm, width) pairs a
sub-network runs is read from its layers (`norm_widths`: the static twins the supernet sized its
norms by), with no forward pass. A block's norm widths depend only on its stage's width and the
block's own type and knobs; the stem's, a downsample's and the head's only on stage widths. So, stage
by stage (from the stem on), and per width of the stage:
- one *base pass*: the largest network with that stage at that width runs the calibration images
  from the stage's input (the largest network's, in eval mode, computed once per stage) as far as
  its untrained norms reach; those norms are estimated on the way, and the inputs of the slots that
  still hold untrained norms are kept;
- then every block (type and knobs) such a slot may hold at that width and that reaches an untrained
  norm is run alone on the slot's kept inputs, estimating its untrained norms.
A (norm, width) is estimated in the first pass that reaches it, in that fixed order. Only the target
norms run in train mode, as exact averages over the images (momentum None). Everything else runs in
eval mode, which is how a candidate is scored afterwards.

Nothing depends on the order candidates are later scored in. The result is a function of the
supernet's weights and the images, so it is kept: `stored_estimate` writes the estimated statistics
to a file beside the checkpoint (`estimate_file`, named by a digest of both) and the next search of
the same supernet on the same images copies them in instead of running the passes again.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from search_spaces import Architecture, Block, Stage
from search_spaces.architecture import IDENTITY_BLOCK
from search_spaces.files import FileError
from search_spaces.layers import LayerSpec

from supernet.candidates import twin
from supernet.checkpoint import CheckpointError, content_digest, load_checkpoint, write_checkpoint
from supernet.elastic import SwitchableBatchNorm2d
from supernet.supernet import Supernet

#: an untrained norm width: (the switchable norm's module name, the width)
NormWidth = tuple[str, int]
#: `_stage_of` the head: after every stage
HEAD_STAGE = 10**9


@dataclass(frozen=True)
class NormEstimate:
    """What `estimate_untrained_norms` did.

    `estimated`: the (norm, width) pairs that were given statistics. `unreachable`: the untrained
    pairs that no sub-network of the space runs; they can never be scored, so they stay as they are.
    `passes`: the calibration passes that were run (base passes and single-block ones). `images`:
    the images each pass read.
    """

    estimated: tuple[NormWidth, ...]
    unreachable: tuple[NormWidth, ...]
    passes: int
    images: int
    seconds: float
    #: where the estimate is kept (`stored_estimate`): the file it was read from or written to;
    #: None when it is not kept (no file asked for, or the file could not be written)
    kept_in: str | None = None
    #: whether it was read from `kept_in` (then `passes` is the stored estimate's, `seconds` the reading's)
    read: bool = False

    def to_dict(self) -> dict[str, object]:
        return {"estimated": len(self.estimated), "unreachable": [f"{name}[{width}]" for name, width in self.unreachable],
                "passes": self.passes, "images": self.images, "seconds": round(self.seconds, 3),
                # the file's name only: it lies beside the checkpoint, and a record (a search's meta, a
                # study's results) must not carry one machine's absolute paths
                "kept_in": None if self.kept_in is None else Path(self.kept_in).name, "read": self.read}


def switchable_norms(supernet: Supernet) -> Iterator[tuple[str, SwitchableBatchNorm2d]]:
    """Every switchable BatchNorm of `supernet` with its module name, in module order."""
    for name, module in supernet.named_modules():
        if isinstance(module, SwitchableBatchNorm2d):
            yield name, module


def _is_untrained(norm: nn.BatchNorm2d) -> bool:
    return int(norm.num_batches_tracked) == 0


def untrained_norm_widths(supernet: Supernet) -> tuple[NormWidth, ...]:
    """Every (norm, width) whose statistics no training step (or estimate) updated, in module order."""
    return tuple((name, width) for name, module in switchable_norms(supernet)
                 for width in module.widths if _is_untrained(module.norm_for(width)))


def untrained_batch_norms(supernet: Supernet, arch: Architecture) -> list[str]:
    """The BatchNorms (place and width) that sub-network `arch` runs but no training step ever
    updated (`num_batches_tracked == 0`): evaluated as they are, they normalise with the initial
    mean 0 and variance 1. Read from the layers `arch` builds (`norm_widths`), without running it."""
    arch = supernet.fit(arch)
    supernet.space.validate(arch)
    untrained = set(untrained_norm_widths(supernet))
    return [f"{name}[{width}]" for name, width in norm_widths(supernet, arch) if (name, width) in untrained]


def norm_widths(supernet: Supernet, arch: Architecture, first_stage: int = 0) -> list[NormWidth]:
    """The (switchable norm, width) pairs sub-network `arch` (valid, fitted) runs, in layer order,
    from stage `first_stage` on (the stem too when 0). Read from the static layers of `arch`'s
    specs (`supernet.candidates.twin`, cached), the same ones the supernet sized its norms by."""
    return [pair for spec in supernet.space.layer_specs(arch) if _stage_of(spec.where) >= first_stage
            for pair in _spec_norm_widths(supernet, spec)]


def _spec_norm_widths(supernet: Supernet, spec: LayerSpec) -> list[NormWidth]:
    """The (switchable norm, width) pairs the layer `spec` runs at its place of the supernet."""
    names = _norm_names(supernet)
    module = supernet.place(spec.where).module_for(spec.kind)
    pairs: list[NormWidth] = []
    for path, layer in twin(spec).named_modules():
        if isinstance(layer, nn.BatchNorm2d):
            norm = module.get_submodule(path) if path else module
            if isinstance(norm, SwitchableBatchNorm2d):
                pairs.append((names[id(norm)], layer.num_features))
    return pairs


def _norm_names(supernet: Supernet) -> dict[int, str]:
    """The module name of each switchable norm, by `id` (kept on the supernet: its modules are fixed)."""
    names = supernet.__dict__.get("_switchable_norm_names")
    if names is None:
        names = {id(module): name for name, module in switchable_norms(supernet)}
        supernet.__dict__["_switchable_norm_names"] = names
    return names


def _norm_modules(supernet: Supernet) -> dict[str, SwitchableBatchNorm2d]:
    """The switchable norms by module name (kept on the supernet: its modules are fixed)."""
    modules = supernet.__dict__.get("_switchable_norm_modules")
    if modules is None:
        modules = dict(switchable_norms(supernet))
        supernet.__dict__["_switchable_norm_modules"] = modules
    return modules


def _stage_of(name: str) -> int:
    """The stage a place or norm name belongs to: 0 for the stem, past the last for the head."""
    first = name.split(".")[0]
    if first == "stem":
        return 0
    if first == "head":
        return HEAD_STAGE
    return int(name.split(".")[1])


def _stage_input(supernet: Supernet, stage: int, images: torch.Tensor) -> torch.Tensor:
    """What stage `stage` of the active sub-network receives for `images` (eval mode, no grad);
    the images themselves for stage 0, whose run starts with the stem."""
    if stage == 0:
        return images
    supernet.eval()
    with torch.no_grad():
        x = supernet.stem(images)
        for module in supernet.stages[:stage]:
            x = module(x)
    return x


def _blocks(supernet: Supernet, stage: int, width: int, types: set[str]) -> Iterator[Block]:
    """Every block of one of `types` a slot of stage `stage` may hold at `width` (all knob values)."""
    space = supernet.space
    choices = space.stages[stage]
    for type_name in choices.block_types:
        if type_name not in types:
            continue
        knobs = space.block_type(type_name).knobs()
        values = [space.knob_choices(choices, width, knob) for knob in knobs]
        for combination in itertools.product(*values):
            yield Block(type_name, **dict(zip(knobs, combination, strict=True)))


def _with_stage(supernet: Supernet, base: Architecture, stage: int, width: int, changes: dict[int, Block]
                ) -> Architecture | None:
    """`base` with stage `stage` at `width` and the given slots changed (None if the space refuses it)."""
    space = supernet.space
    blocks = [space.heads_for(stage, width, block) for block in base.stages[stage].blocks]
    for slot, block in changes.items():
        blocks += [IDENTITY_BLOCK] * (slot + 1 - len(blocks))
        blocks[slot] = block
    arch = base.replace_stage(stage, Stage(width, tuple(blocks)))
    return arch if space.contains(arch) else None


def _slot_types(supernet: Supernet, stage: int, names: set[str]) -> dict[int, set[str]]:
    """Per slot of stage `stage`, the block types whose layers hold one of the norms `names`."""
    owners: dict[int, set[str]] = {}
    all_names = _norm_names(supernet)
    for (index, slot), path in supernet.metapaths():
        if index != stage:
            continue
        for key, module in path.candidates.items():
            if any(all_names.get(id(m)) in names for m in module.modules()):
                owners.setdefault(slot, set()).add(path.kinds[key])
    return owners


@contextlib.contextmanager
def _estimating(supernet: Supernet, targets: set[NormWidth]) -> Iterator[None]:
    """Inside: the `targets` norms are reset and average the statistics of every batch they see
    (momentum None); no gradients. The supernet must be in eval mode; they are again after."""
    modules = _norm_modules(supernet)
    norms = [modules[name].norm_for(width) for name, width in sorted(targets)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    try:
        with torch.no_grad():
            yield
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
            norm.eval()


def _run_stages(supernet: Supernet, first: int, last: int, head: bool, x: torch.Tensor) -> None:
    """The active sub-network's stages `first`..`last` (and the stem before stage 0, the head after
    when `head`) on `x`, stage `first`'s input; the outputs are not needed, only the norms' inputs."""
    if first == 0:
        x = supernet.stem(x)
    for module in supernet.stages[first : last + 1]:
        x = module(x)
    if head:
        supernet.head(x)


def _estimate_stage(supernet: Supernet, base: Architecture, stage: int, inputs: list[torch.Tensor],
                    left: set[NormWidth]) -> tuple[list[NormWidth], int]:
    """Estimate what of `left` stage `stage`'s variants reach: per stage width, one pass of the
    largest network's blocks at that width (its untrained norms estimated, the inputs of the slots
    still holding untrained norms kept), then each block those slots may hold, run alone on its
    slot's kept inputs. Removes what it estimates from `left`; returns it and the passes run."""
    estimated: list[NormWidth] = []
    passes = 0
    for width in supernet.space.stages[stage].widths:
        arch = _with_stage(supernet, base, stage, width, {})
        if arch is None:
            continue
        owners = _slot_types(supernet, stage, {name for name, _ in left})
        base_targets = set(norm_widths(supernet, arch, stage)) & left
        reached = []  # (slot, the slot's layer in the variant, the untrained pairs it adds)
        for slot, types in sorted(owners.items()):
            where = f"stages.{stage}.blocks.{slot}"
            for block in _blocks(supernet, stage, width, types):
                variant = _with_stage(supernet, base, stage, width, {slot: block})
                if variant is None:
                    continue
                spec = next(spec for spec in supernet.space.layer_specs(variant) if spec.where == where)
                targets = set(_spec_norm_widths(supernet, spec)) & left - base_targets
                if targets:
                    reached.append((slot, spec, targets))
        if not base_targets and not reached:
            continue
        kept: dict[int, list[torch.Tensor]] = {slot: [] for slot in {slot for slot, _, _ in reached}}
        blocks = supernet.stages[stage].blocks
        hooks = [blocks[slot].register_forward_pre_hook(lambda module, args, slot=slot, kept=kept: kept[slot].append(args[0]))
                 for slot in kept]
        supernet.set_arch(arch)
        head = any(_stage_of(name) == HEAD_STAGE for name, _ in base_targets)
        last = len(supernet.stages) - 1 if head else max([stage, *(_stage_of(name) for name, _ in base_targets)])
        try:
            with _estimating(supernet, base_targets):
                for x in inputs:
                    _run_stages(supernet, stage, last, head, x)
        finally:
            for hook in hooks:
                hook.remove()
        passes += 1
        left -= base_targets
        estimated += sorted(base_targets)
        for slot, spec, targets in reached:
            targets &= left
            if not targets:
                continue
            blocks[slot].activate(spec)  # the rest of the network is not run
            with _estimating(supernet, targets):
                for x in kept[slot]:
                    blocks[slot](x)
            passes += 1
            left -= targets
            estimated += sorted(targets)
    return estimated, passes


def estimate_untrained_norms(supernet: Supernet, images: list[torch.Tensor]) -> NormEstimate:
    """Give every untrained (norm, width) of `supernet` statistics estimated on `images` (a list of
    batches), in a sub-network that runs it; the trained widths' statistics are not touched.

    Deterministic in the supernet's weights and `images`. Leaves the supernet in eval mode with its
    previous architecture and mode; see the module docstring for how every width is reached.
    """
    start = time.perf_counter()
    wanted = set(untrained_norm_widths(supernet))
    count = sum(len(batch) for batch in images)
    if not wanted:
        return NormEstimate((), (), 0, count, time.perf_counter() - start)
    previous_arch, previous_mode = supernet.arch, supernet.mode
    previous_tau = next(path.tau for _, path in supernet.metapaths())
    supernet.set_mode("fixed")
    base = supernet.fit(supernet.space.largest())
    images = [batch.to(supernet.device) for batch in images]
    supernet.eval()
    estimated: list[NormWidth] = []
    passes = 0
    left = set(wanted)
    try:
        for stage in range(len(supernet.space.stages)):
            if not left:
                break
            supernet.set_arch(base)
            inputs = [_stage_input(supernet, stage, batch) for batch in images]
            done, runs = _estimate_stage(supernet, base, stage, inputs, left)
            estimated += done
            passes += runs
    finally:
        supernet.eval()
        supernet.set_mode(previous_mode, previous_tau)
        if previous_arch is not None:
            supernet.set_arch(previous_arch)
    unreachable = tuple(pair for pair in untrained_norm_widths(supernet) if pair in wanted)
    return NormEstimate(tuple(estimated), unreachable, passes, count, time.perf_counter() - start)


#: the format of a file `stored_estimate` keeps an estimate in
ESTIMATE_FORMAT = "latnas-untrained-norm-estimate-v1"
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def images_digest(images: list[torch.Tensor]) -> str:
    """The sha256 of calibration `images` (their values, shapes and order): half of the key an
    estimate is kept under (`estimate_file`, `stored_estimate`)."""
    return content_digest({"images": list(images)})


def estimate_file(checkpoint: str | Path, weights_sha256: str, images_sha256: str) -> Path:
    """Where `stored_estimate` keeps the estimate of the supernet at `checkpoint` (weights digest
    `weights_sha256`) on the images of digest `images_sha256` (`images_digest`): beside the
    checkpoint, named by a digest of both, so estimates on other images or of other weights never
    share a file."""
    key = content_digest({"weights_sha256": weights_sha256, "images_sha256": images_sha256})
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.name}.untrained-norms-{key[:16]}.pt")


def stored_estimate(supernet: Supernet, images: list[torch.Tensor], path: str | Path,
                    weights_sha256: str, images_sha256: str) -> NormEstimate:
    """`estimate_untrained_norms(supernet, images)`, kept in the file `path` (`estimate_file`).

    When `path` holds an estimate for these weights (`weights_sha256`, the digest of the supernet's
    weights and buffers as trained) and these images (`images_sha256`, `images_digest(images)`,
    passed in so that a caller naming the file hashes them once), covering exactly the widths that are untrained
    now, its statistics are copied in and nothing is run: the buffers end up bit-identical to a
    fresh estimate's. Otherwise (no file, another key, damaged or foreign content) the widths are
    estimated and the file is (re)written atomically; a file that cannot be written (a read-only
    folder) leaves the estimate unkept (`kept_in` None), not failed.
    """
    path = Path(path)
    start = time.perf_counter()
    untrained = set(untrained_norm_widths(supernet))
    try:
        payload = load_checkpoint(path, ESTIMATE_FORMAT, "untrained-norm estimate")
    except CheckpointError:
        payload = None
    if payload is not None:
        recalled = _recall(supernet, payload, weights_sha256, images_sha256, untrained)
        if recalled is not None:
            return NormEstimate(recalled.estimated, recalled.unreachable, recalled.passes, recalled.images,
                                time.perf_counter() - start, kept_in=str(path), read=True)
    estimate = estimate_untrained_norms(supernet, images)
    modules = _norm_modules(supernet)
    state = {f"{name}.norms.{width}.{buffer}": getattr(modules[name].norm_for(width), buffer).detach().clone()
             for name, width in estimate.estimated for buffer in _BUFFERS}
    record = {"format": ESTIMATE_FORMAT, "weights_sha256": weights_sha256, "images_sha256": images_sha256,
              "estimated": [[name, width] for name, width in estimate.estimated],
              "unreachable": [[name, width] for name, width in estimate.unreachable],
              "passes": estimate.passes, "images": estimate.images, "seconds": estimate.seconds, "state": state}
    try:
        write_checkpoint(path, record)
    except (OSError, FileError):  # an unwritable place, or non-finite statistics (CheckpointError): not kept
        return estimate
    return NormEstimate(estimate.estimated, estimate.unreachable, estimate.passes, estimate.images,
                        estimate.seconds, kept_in=str(path))


def _recall(supernet: Supernet, payload: dict, weights_sha256: str, images_sha256: str,
            untrained: set[NormWidth]) -> NormEstimate | None:
    """The stored estimate `payload` copied into `supernet`'s buffers, or None (nothing changed)
    when it is for other weights or images, or does not cover exactly the `untrained` widths."""
    try:
        if payload["weights_sha256"] != weights_sha256 or payload["images_sha256"] != images_sha256:
            return None
        estimated = tuple((str(name), int(width)) for name, width in payload["estimated"])
        unreachable = tuple((str(name), int(width)) for name, width in payload["unreachable"])
        if set(estimated) | set(unreachable) != untrained or len(set(estimated)) != len(estimated):
            return None
        modules = _norm_modules(supernet)
        copies = []
        for name, width in estimated:
            norm = modules[name].norm_for(width)
            for buffer in _BUFFERS:
                target, value = getattr(norm, buffer), payload["state"][f"{name}.norms.{width}.{buffer}"]
                if not isinstance(value, torch.Tensor) or value.shape != target.shape or value.dtype != target.dtype:
                    return None
                copies.append((target, value))
        record = NormEstimate(estimated, unreachable, int(payload["passes"]), int(payload["images"]),
                              float(payload["seconds"]))
    except (KeyError, TypeError, ValueError):
        return None
    with torch.no_grad():
        for target, value in copies:
            target.copy_(value)
    return record


__all__ = ["ESTIMATE_FORMAT", "NormEstimate", "NormWidth", "estimate_file", "estimate_untrained_norms", "images_digest",
           "norm_widths", "stored_estimate", "switchable_norms", "untrained_batch_norms", "untrained_norm_widths"]
