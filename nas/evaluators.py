"""Evaluators: a score per architecture (higher is better), cached per architecture.

- `SupernetEvaluator`: top-1 accuracy (%) of the sub-network run inside a trained supernet on
  held-out data (`supernet.training.evaluate`), optionally after BN recalibration.
- `nas.synflow.SynFlowEvaluator`: the training-free proxy (SynFlow saliency a sub-network keeps),
  used when no supernet is given; the output then says `evaluator: proxy`.

A search request names its evaluator by an `EvaluatorSpec` (`ProxyEvaluation`,
`SupernetEvaluation`): `validate` checks it without loading anything, `build` loads the
checkpoint and the data and returns the evaluator (`nas.problem.Evaluator`) and the supernet.
"""

from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from search_spaces import Architecture, SearchSpace
from search_spaces.files import FileError, check_input_file
from search_spaces.limits import MAX_CHECKPOINT_BYTES

from nas.problem import Evaluator

#: the largest number of BN recalibration or evaluation batches a request may ask for
MAX_BATCHES = 100_000
#: calibration batches (64 images each: enough for stable per-channel means at these widths) for
#: BatchNorm widths no training step updated: estimated once per supernet on them, or per candidate
AUTO_RECALIBRATION_BATCHES = 10
#: how a shared-statistics evaluator handles untrained BatchNorm widths (`SupernetEvaluator`)
UNTRAINED_NORMS = ("estimate", "recalibrate")
#: the default bound on the bytes of activations `SupernetEvaluator`'s prefix cache keeps
PREFIX_CACHE_BYTES = 2 * 2**30
#: torch's RNG seed while calibration batches are read (see `SupernetEvaluator.calibration`)
CALIBRATION_SEED = 0


def _tensor_bytes(value: Any) -> int:
    """Bytes held by the tensors in `value` (a tensor, or lists/tuples of them)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(item) for item in value)
    return 0


def check_screen_batches(screen_batches: int, evaluation_batches: int) -> None:
    """Screening must read fewer batches than scoring (else it would cost as much); `ValueError`."""
    if screen_batches and screen_batches >= evaluation_batches:
        raise ValueError(f"screen_batches {screen_batches} is not fewer than the {evaluation_batches} evaluation "
                         "batches (screening would cost as much as scoring)")


class EvaluatorError(ValueError):
    """An evaluator that cannot be built; `field` names the request field at fault."""

    def __init__(self, field_name: str, message: str) -> None:
        self.field = field_name
        super().__init__(message)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _check_checkpoint_path(checkpoint: str | Path) -> None:
    try:
        check_input_file(checkpoint, "", MAX_CHECKPOINT_BYTES)
    except FileError as error:
        raise EvaluatorError("supernet", str(error)) from None


def load_supernet(checkpoint: str | Path, space: SearchSpace):
    """The supernet of `checkpoint`; `EvaluatorError` (one line) for a missing, foreign or corrupt file."""
    from supernet import Supernet

    _check_checkpoint_path(checkpoint)
    try:
        return Supernet.load(checkpoint, space=space.name)
    except Exception as error:  # noqa: BLE001  (any unreadable checkpoint is one line of bad input)
        raise EvaluatorError("supernet", f"cannot use {checkpoint}: {_first_line(error)}") from None


class EvaluatorSpec:
    """How to score candidates, before anything is loaded (see the module docstring)."""

    name = ""

    def validate(self, space: SearchSpace) -> None:
        """Cheap checks (settings, files exist); `EvaluatorError` naming the field."""

    def build(self, space: SearchSpace, seed: int) -> tuple[Evaluator, Any]:
        """The evaluator and the supernet it scores with (None when it has none)."""
        raise NotImplementedError


@dataclass(frozen=True)
class ProxyEvaluation(EvaluatorSpec):
    """The SynFlow proxy, on weights initialised from the request's seed or on a checkpoint's."""

    checkpoint: Path | None = None
    name = "proxy"

    def validate(self, space: SearchSpace) -> None:
        if self.checkpoint is not None:
            _check_checkpoint_path(self.checkpoint)

    def build(self, space: SearchSpace, seed: int) -> tuple[Evaluator, Any]:
        from nas.synflow import SynFlowEvaluator

        if self.checkpoint is None:
            return SynFlowEvaluator.from_space(space, seed=seed), None
        net = load_supernet(self.checkpoint, space)
        return SynFlowEvaluator.from_supernet(net, source=f"supernet {Path(self.checkpoint).name}"), net


@dataclass(frozen=True)
class SupernetEvaluation(EvaluatorSpec):
    """Top-1 accuracy through a trained supernet on split `split` of data `data`
    (`supernet.data`), optionally after re-estimating BN statistics on `recalibrate` training
    batches, on at most `eval_batches` batches of `batch_size` images; `screen_batches` > 0 also
    screens on the first that many of them (`SupernetEvaluator.screen`). `untrained_norms` says
    what shared statistics do about BatchNorm widths no training step updated (`UNTRAINED_NORMS`)."""

    checkpoint: Path
    data: str
    split: str = "val"
    recalibrate: int = 0
    eval_batches: int | None = None
    batch_size: int = 256
    screen_batches: int = 0
    untrained_norms: str = "estimate"
    name = "supernet"

    def validate(self, space: SearchSpace) -> None:
        _check_checkpoint_path(self.checkpoint)
        if not isinstance(self.data, str) or not self.data.strip():
            raise EvaluatorError("data", "the supernet evaluator needs a data spec (the held-out images it scores on)")
        if self.split == "test":
            raise EvaluatorError("split", "a search selects on val; test is for the report made after it")
        if self.split not in ("train", "val"):
            raise EvaluatorError("split", f"unknown split {self.split!r}; a search selects on val (or train)")
        if self.untrained_norms not in UNTRAINED_NORMS:
            raise EvaluatorError("untrained_norms", f"{self.untrained_norms!r} is not one of {', '.join(UNTRAINED_NORMS)}")
        for name, value, lowest in (("recalibrate", self.recalibrate, 0), ("eval_batches", self.eval_batches, 1),
                                    ("batch_size", self.batch_size, 1), ("screen_batches", self.screen_batches, 0)):
            if value is not None and not (isinstance(value, int) and lowest <= value <= MAX_BATCHES):
                raise EvaluatorError(name, f"{value!r} is not an integer from {lowest} to {MAX_BATCHES}")
        if self.eval_batches is not None:  # the split's own size is checked when the data is read
            try:
                check_screen_batches(self.screen_batches, self.eval_batches)
            except ValueError as error:
                raise EvaluatorError("screen_batches", str(error)) from None

    def load_data(self, resolution: int, seed: int):
        from supernet.data import load_data

        try:
            return load_data(self.data, resolution, seed=seed)
        except ValueError as error:
            raise EvaluatorError("data", f"bad data {self.data!r}: {_first_line(error)}") from None

    def build(self, space: SearchSpace, seed: int) -> tuple[Evaluator, Any]:
        from torch.utils.data import DataLoader

        net = load_supernet(self.checkpoint, space)
        bundle = self.load_data(net.resolution, seed)
        if bundle.num_classes != net.num_classes:
            raise EvaluatorError("data", f"{self.data} has {bundle.num_classes} classes, the supernet "
                                         f"{Path(self.checkpoint).name} {net.num_classes}")
        loader = DataLoader(bundle.split(self.split), batch_size=self.batch_size, shuffle=False)
        calibration = DataLoader(bundle.train, batch_size=64, shuffle=False)
        test = DataLoader(bundle.test, batch_size=self.batch_size, shuffle=False) if bundle.test is not None else None
        try:
            check_screen_batches(self.screen_batches, min(len(loader), self.eval_batches or len(loader)))
        except ValueError as error:
            raise EvaluatorError("screen_batches", f"{error}, in {self.data}'s {self.split} split") from None
        evaluator = SupernetEvaluator(net, loader, self.eval_batches, self.recalibrate, calibration, split=self.split,
                                      test_loader=test, screen_batches=self.screen_batches,
                                      untrained_norms=self.untrained_norms, keep_estimate_beside=self.checkpoint)
        return evaluator, net


class SupernetEvaluator:
    """Top-1 accuracy (%) of `arch` inside a trained supernet on held-out data.

    The first `max_batches` batches of `loader` (all when None) are read once and kept, so every
    architecture is scored on the same images without re-reading them. `recalibrate` > 0
    re-estimates the sub-network's BN statistics on that many batches of `calibration_loader`
    (training data; default `loader`) before evaluating. Without it, every candidate is scored on
    the supernet's shared statistics, and `untrained_norms` says what happens to the BatchNorm
    widths no training step updated (`supernet.untrained_norms`: the narrower widths of a
    Gumbel-trained supernet, the rare deep-slot widths of a sandwich-trained one), which would
    otherwise normalise with the initial mean 0 and variance 1:
    - `estimate` (default): on construction, each gets statistics estimated once, in a sub-network
      that runs it, on `AUTO_RECALIBRATION_BATCHES` calibration batches
      (`estimate_untrained_norms`; the trained widths are not touched). Every candidate is then
      scored on shared statistics, and the prefix cache serves all of them. `norm_estimate` says
      what was estimated. This changes the supernet's buffers in place. With
      `keep_estimate_beside` (the checkpoint the supernet was read from) the estimate is kept in a
      file beside it and read back by the next evaluator of the same weights and images
      (`supernet.untrained_norms.stored_estimate`) instead of being run again;
    - `recalibrate`: a candidate that runs one has its whole sub-network recalibrated on those
      batches before it is scored (exact, but a calibration pass per such candidate, and scored
      with other statistics than its neighbours); `report()` counts how many were.

    The calibration batches are read from `calibration_loader` once, on first need, and reused for
    every candidate (its images only): every candidate is recalibrated on the same images, so two
    candidates differ by their architecture and not by which augmented draws they were given.

    The activations after the stem and after each stage are cached by the architecture prefix that
    produced them (stage i's output depends on stages 0..i only, and the supernet in eval mode is
    deterministic): a greedy step's candidates differ from each other in one place, so most of them
    re-run only the stages from that place on. With recalibration the same holds one level down:
    stage i's re-estimated statistics depend only on what stages 0..i did to the calibration
    images, so each cached prefix also keeps the calibration activations (train-mode outputs, what
    the next stage's BatchNorms are estimated on), and a candidate recalibrates and runs only the
    stages from its first new one on; the scores equal `recalibrate_bn` on the whole network.
    `prefix_cache` bounds how many prefixes are kept (each holds one activation tensor per batch),
    `prefix_cache_bytes` how many bytes of activations they hold together (least recently used
    first out; a prefix larger than the whole budget is not kept): with 10,000 images at 64 px one
    early-stage prefix is over a gigabyte, so a count alone does not bound memory.

    `screen_batches` > 0 also offers `screen(arch)`: the same accuracy with the same BN handling on
    only the first `screen_batches` evaluation batches, a cheaper and noisier estimate of `score`
    that a greedy step can rank its candidates by before scoring a shortlist on all of them
    (`nas.greedy`). Screening and scoring keep separate caches and counts (`screenings`).
    The evaluator puts the supernet in eval mode when it is built, and scores it there.
    `calibration_images` shares the calibration images read by another evaluator (a list both keep
    extending), so that both recalibrate every candidate on the same images.
    """

    name = "supernet"

    def __init__(self, net, loader, max_batches: int | None = None, recalibrate: int = 0,
                 calibration_loader=None, prefix_cache: int = 256, split: str = "val", test_loader=None,
                 screen_batches: int = 0, calibration_images: list[torch.Tensor] | None = None,
                 prefix_cache_bytes: int | None = None, untrained_norms: str = "estimate",
                 keep_estimate_beside: str | Path | None = None) -> None:
        if untrained_norms not in UNTRAINED_NORMS:
            raise ValueError(f"untrained_norms must be one of {UNTRAINED_NORMS}, got {untrained_norms!r}")
        # scored in eval mode; put there once, since switching walks every module of the supernet
        self.net = net.eval()
        self._weights_sha256: str | None = None
        self.untrained_norms = untrained_norms
        self.split = split
        self.test_loader = test_loader
        # a prefix's activations: one tensor per batch (with recalibration: calibration and evaluation lists)
        self._prefixes: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
        self.prefix_cache = prefix_cache
        self.prefix_cache_bytes = PREFIX_CACHE_BYTES if prefix_cache_bytes is None else prefix_cache_bytes
        self._prefix_sizes: dict[tuple, int] = {}
        self._prefix_bytes = 0
        # held where the supernet's weights are (`net.to("cuda")` scores on the GPU)
        self.batches = [(images.to(net.device), labels.to(net.device))
                        for images, labels in itertools.islice(loader, max_batches)]
        if not self.batches:
            raise ValueError("the evaluation data has no batches")
        self.max_batches = max_batches
        self.recalibrate = recalibrate
        self.calibration_loader = calibration_loader if calibration_loader is not None else loader
        # images of the calibration batches read so far (shared with `calibration_images`' owner)
        self._calibration: list[torch.Tensor] = calibration_images if calibration_images is not None else []
        self._cache: dict[Architecture, float] = {}
        self.evaluations = 0
        self.auto_recalibrated = 0
        self.screen_batches = screen_batches
        check_screen_batches(screen_batches, len(self.batches))
        self.norm_estimate = None
        from supernet.untrained_norms import (estimate_file, estimate_untrained_norms, images_digest,
                                              stored_estimate, untrained_norm_widths)

        # whether a candidate can run an untrained width at all (none can once every one is estimated)
        self._untrained_left = bool(untrained_norm_widths(net))
        if self._untrained_left and not recalibrate and untrained_norms == "estimate":
            # of the weights as trained: the estimate follows from them and the settings
            weights = self.weights_sha256
            images = self.calibration(AUTO_RECALIBRATION_BATCHES)
            if keep_estimate_beside is None:
                self.norm_estimate = estimate_untrained_norms(net, images)
            else:
                digest = images_digest(images)
                self.norm_estimate = stored_estimate(net, images, estimate_file(keep_estimate_beside, weights, digest),
                                                     weights, digest)
            self._untrained_left = bool(self.norm_estimate.unreachable)
        self._screener = (SupernetEvaluator(net, self.batches[:screen_batches], None, recalibrate,
                                            self.calibration_loader, prefix_cache, split,
                                            calibration_images=self._calibration,
                                            prefix_cache_bytes=self.prefix_cache_bytes,
                                            untrained_norms=untrained_norms) if screen_batches else None)

    def score(self, arch: Architecture) -> float:
        value = self._cache.get(arch)
        if value is None:
            self.evaluations += 1
            value = self._evaluate(self.net.fit(arch))
            self._cache[arch] = value
        return value

    def screen(self, arch: Architecture) -> float:
        """`arch`'s accuracy (%) on the first `screen_batches` evaluation batches (cached); raises
        `ValueError` when the evaluator was built without them."""
        if self._screener is None:
            raise ValueError("this evaluator screens nothing: build it with screen_batches > 0")
        return self._screener.score(arch)

    @property
    def screenings(self) -> int:
        """How many distinct architectures `screen` evaluated."""
        return self._screener.evaluations if self._screener is not None else 0

    def _evaluate(self, arch: Architecture) -> float:
        from supernet.training import accuracy, evaluate, recalibrated_network
        from supernet.untrained_norms import untrained_batch_norms

        batches = self.recalibrate
        if not batches and self._untrained_left and untrained_batch_norms(self.net, arch):
            batches = AUTO_RECALIBRATION_BATCHES
            self.auto_recalibrated += 1
        if batches and not self.prefix_cache:
            model = recalibrated_network(self.net, arch, self.calibration(batches))
            return 100.0 * float(accuracy(model, self.batches))
        if batches:
            return self._evaluate_recalibrated_by_stage(arch, batches)
        if not self.prefix_cache:
            return 100.0 * float(evaluate(self.net, arch, self.batches))
        return self._evaluate_by_stage(arch)

    def calibration(self, batches: int) -> list[torch.Tensor]:
        """The images of the first `batches` calibration batches (read once, then reused).

        Read under torch's RNG seeded with `CALIBRATION_SEED` (and the caller's RNG state restored
        afterwards): a training loader's shuffling and augmentation draw from that RNG, so without
        the seed another process (a resumed search, a second shard) would recalibrate on other
        images and score the same architecture differently."""
        if len(self._calibration) < batches:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(CALIBRATION_SEED)
                read = [images.to(self.net.device)
                        for images, _ in itertools.islice(iter(self.calibration_loader), batches)]
            self._calibration.extend(read[len(self._calibration):])
        return self._calibration[:batches]

    def _evaluate_recalibrated_by_stage(self, arch: Architecture, batches: int) -> float:
        from supernet.training import recalibrated_outputs

        network = self.net.extract(arch).eval()
        key: tuple = ("recalibrated", batches, "stem", arch.stages[0].width)
        calibration = [self.calibration(batches), [images for images, _ in self.batches]]
        outputs = self._prefix(key, lambda: recalibrated_outputs(network.stem, *calibration))
        for index, stage in enumerate(network.stages):
            previous = outputs
            key = (*key, arch.stages[index])
            outputs = self._prefix(key, lambda stage=stage, previous=previous: recalibrated_outputs(stage, *previous))
        _, logits = recalibrated_outputs(network.head, *outputs)
        correct = sum(int((x.argmax(1) == labels).sum()) for x, (_, labels) in zip(logits, self.batches))
        return 100.0 * (correct / sum(len(labels) for _, labels in self.batches))  # as `accuracy` rounds

    def _evaluate_by_stage(self, arch: Architecture) -> float:
        net = self.net
        was_training = net.training
        net.set_arch(arch)
        # `Module.eval()` walks every module of the supernet (every block type of every slot): a
        # third of a screening's time when done per candidate, so only when the mode changes (the
        # evaluator put the supernet in eval mode once; a caller may have trained it since)
        if was_training:
            net.eval()
        try:
            with torch.no_grad():
                key: tuple = ("stem", arch.stages[0].width)
                outputs = self._prefix(key, lambda: [net.stem(images) for images, _ in self.batches])
                for index, stage in enumerate(net.stages):
                    previous = outputs
                    key = (*key, arch.stages[index])
                    outputs = self._prefix(key, lambda stage=stage, previous=previous: [stage(x) for x in previous])
                correct = sum(int((net.head(x).argmax(1) == labels).sum()) for x, (_, labels) in zip(outputs, self.batches))
        finally:
            if was_training:
                net.train()
        return 100.0 * (correct / sum(len(labels) for _, labels in self.batches))  # as `evaluate` rounds

    def _prefix(self, key: tuple, compute) -> Any:
        cached = self._prefixes.get(key)
        if cached is None:
            cached = compute()
            size = _tensor_bytes(cached)
            if size <= self.prefix_cache_bytes:
                self._prefixes[key] = cached
                self._prefix_sizes[key] = size
                self._prefix_bytes += size
            while self._prefixes and (len(self._prefixes) > self.prefix_cache
                                      or self._prefix_bytes > self.prefix_cache_bytes):
                evicted, _ = self._prefixes.popitem(last=False)
                self._prefix_bytes -= self._prefix_sizes.pop(evicted)
        else:
            self._prefixes.move_to_end(key)
        return cached

    @property
    def prefix_cache_bytes_used(self) -> int:
        """Bytes of activations the prefix cache holds now (at most `prefix_cache_bytes`)."""
        return self._prefix_bytes

    @property
    def weights_sha256(self) -> str:
        """The sha256 of the supernet's weights and buffers (`supernet.checkpoint.content_digest`
        of its state dict) as trained, computed once (before untrained norms are estimated, which
        follows from them and `settings()`): which trained supernet the scores come from. A score
        cache or a resumed search keyed on `settings()` then never mixes two supernets' scores,
        not even two trainings of one config (a checkpoint's own digest covers its training log,
        which holds wall times, so it differs between identical trainings; this does not)."""
        if self._weights_sha256 is None:
            from supernet.checkpoint import content_digest

            self._weights_sha256 = content_digest(dict(self.net.state_dict()))
        return self._weights_sha256

    def settings(self) -> dict[str, Any]:
        settings = {"name": self.name, "split": self.split, "recalibrate_batches": self.recalibrate,
                    "images": sum(len(y) for _, y in self.batches), "weights_sha256": self.weights_sha256}
        if not self.recalibrate:
            settings["untrained_norms"] = self.untrained_norms
        if self._screener is not None:
            settings["screen_images"] = sum(len(y) for _, y in self._screener.batches)
        return settings

    def test_accuracy(self, arch: Architecture) -> float | None:
        """`arch`'s accuracy (%) on the whole test split (None without one), with the same BN
        handling as `score`. For the report made once a search is over: nothing a search decides
        may read it, and `score` never does."""
        if self.test_loader is None:
            return None
        # recalibrated on the images the search's scores were
        held_out = SupernetEvaluator(self.net, self.test_loader, None, self.recalibrate, self.calibration_loader,
                                     prefix_cache=0, split="test", calibration_images=self._calibration,
                                     untrained_norms=self.untrained_norms)
        return held_out.score(arch)

    def report(self) -> dict[str, Any]:
        """What happened during the search (not a setting): candidates recalibrated because they
        ran untrained BatchNorm statistics, and the untrained widths estimated on construction."""
        report = {"evaluations": self.evaluations, "auto_recalibrated": self.auto_recalibrated}
        if self.norm_estimate is not None:
            report["untrained_norms_estimated"] = self.norm_estimate.to_dict()
        if self._screener is not None:
            report.update(screenings=self.screenings, auto_recalibrated=report["auto_recalibrated"]
                          + self._screener.auto_recalibrated)
        return report
