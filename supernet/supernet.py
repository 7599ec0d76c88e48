"""The slimmable supernet: one shared-weight network that every architecture of a space runs inside.

Layout mirrors `search_spaces.Network` (stem, stages of downsample + block slots, head), so an
extracted sub-network is the very module tree `build_model(arch)` makes. Every place holds, per
layer kind, one block built at its largest size from `ElasticOps`; a block slot is a `MetaPath`
over the kinds its stage allows plus identity, with architecture logits α.

How a sub-network is activated (`set_arch`): for each layer of the architecture, the static module
that `search_spaces` would build for it (its twin, on the meta device) says the size of every
elastic op and the value of every structural attribute (head count, layout flags); the supernet's
block copies them. Block code runs unchanged, so `supernet(x) == extract(arch)(x)` holds by
construction rather than by a second implementation.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

import search_spaces
from search_spaces import (
    Architecture,
    ArchitectureError,
    Block,
    LayerSpec,
    SearchSpace,
    build_layer,
    get_space,
    list_spaces,
)
from search_spaces.architecture import IDENTITY
from search_spaces.limits import NUM_CLASSES, RESOLUTION
from search_spaces.network import Network, NetworkStage, assemble
from supernet.candidates import PlaceCandidates, place_candidates, twin
from supernet.checkpoint import CheckpointError, checkpoint_label, load_checkpoint, shown, write_checkpoint
from supernet.elastic import ELASTIC_OPS, ElasticOp, SwitchableBatchNorm2d, prefix_slice
from supernet.importance import MetaPathImportance, slot_importance

CHECKPOINT_FORMAT = "latnas/supernet@1"
MODES = ("fixed", "gumbel", "gumbel_hard")
_SIMPLE_TYPES = (bool, int, float, str, tuple, type(None))


def _module_key(kind: str) -> str:
    return kind.replace(".", "__")  # ModuleDict keys may not contain dots


def _configure(module: nn.Module, twin_module: nn.Module) -> None:
    """Make `module` (largest size, elastic ops) run as `twin_module` (a static layer) does."""
    for name, static in twin_module.named_modules():
        target = module.get_submodule(name) if name else module
        if isinstance(target, ElasticOp):
            target.configure(static)
        elif isinstance(target, SwitchableBatchNorm2d):
            continue  # picks its BatchNorm from the input width
        else:
            own = vars(target)
            for attribute, value in vars(static).items():
                if attribute.startswith("_") or attribute == "training" or not isinstance(value, _SIMPLE_TYPES):
                    continue
                if attribute in own and own[attribute] != value:
                    setattr(target, attribute, value)


def _export(module: nn.Module, static: nn.Module) -> None:
    """Copy the weights `static` (a freshly built layer) owns out of `module` (largest size)."""
    with torch.no_grad():
        for name, target in static.named_modules():
            source = module.get_submodule(name) if name else module
            if isinstance(source, SwitchableBatchNorm2d):
                source.export_into(target)
                continue
            if isinstance(target, nn.BatchNorm2d):  # its tensors were copied by the BN above it
                continue
            chunks = getattr(source, "tensor_chunks", {})
            own = {**dict(source.named_parameters(recurse=False)), **dict(source.named_buffers(recurse=False))}
            for tensor_name, tensor in [*target.named_parameters(recurse=False), *target.named_buffers(recurse=False)]:
                if tensor_name in target._non_persistent_buffers_set:
                    continue  # derived from the spec (index tables): the static build already has it
                tensor.copy_(prefix_slice(own[tensor_name], tensor.shape, chunks.get(tensor_name)))


def _check_fits(module: nn.Module, static: nn.Module, label: str) -> dict[str, set[int]]:
    """Check every static tensor fits its largest counterpart; return BatchNorm widths by path."""
    norm_widths: dict[str, set[int]] = {}
    for name, target in static.named_modules():
        source = module.get_submodule(name) if name else module
        if isinstance(source, SwitchableBatchNorm2d):
            norm_widths.setdefault(name, set()).add(target.num_features)
            continue
        if isinstance(target, nn.BatchNorm2d):
            continue
        own = {**dict(source.named_parameters(recurse=False)), **dict(source.named_buffers(recurse=False))}
        for tensor_name, tensor in [*target.named_parameters(recurse=False), *target.named_buffers(recurse=False)]:
            big = own.get(tensor_name)
            if big is None or big.dim() != tensor.dim() or any(s > b for s, b in zip(tensor.shape, big.shape)):
                raise RuntimeError(
                    f"{label}: {name or 'module'}.{tensor_name} {tuple(tensor.shape)} does not fit the largest layer"
                    f" ({None if big is None else tuple(big.shape)})"
                )
    return norm_widths


class LayerChoice(nn.Module):
    """A supernet place: one largest-size module per layer kind, one of them active."""

    def __init__(self, places: Mapping[str, PlaceCandidates]) -> None:
        super().__init__()
        self.candidates = nn.ModuleDict()
        self.kinds: dict[str, str] = {}
        for kind, candidates in places.items():
            module = build_layer(candidates.largest, ELASTIC_OPS)
            norm_widths: dict[str, set[int]] = {}
            for spec in candidates.specs:
                for path, widths in _check_fits(module, twin(spec), f"{spec.where} ({spec.key()})").items():
                    norm_widths.setdefault(path, set()).update(widths)
            for path, widths in norm_widths.items():
                module.get_submodule(path).set_candidates(widths)
            self.candidates[_module_key(kind)] = module
            self.kinds[_module_key(kind)] = kind
        self.active: str | None = next(iter(self.candidates), None)

    def module_for(self, kind: str) -> nn.Module:
        key = _module_key(kind)
        if key not in self.candidates:
            raise ArchitectureError("", f"this place of the supernet has no {kind!r} layer; it has {list(self.kinds.values())}")
        return self.candidates[key]

    def activate(self, spec: LayerSpec) -> None:
        module = self.module_for(spec.kind)
        _configure(module, twin(spec))
        self.active = _module_key(spec.kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.candidates[self.active](x)


class MetaPath(LayerChoice):
    """A block slot: its candidate blocks plus identity, with architecture logits α.

    Modes: `fixed` runs the active architecture's block (or identity); `gumbel` mixes every path
    with Gumbel-softmax weights at temperature `tau` (EfficientFormer V1's supernet training);
    `gumbel_hard` samples one path and runs only it, gradients reaching α straight through.
    Path order (and α's): the stage's block types in the space's order, then identity.
    A path whose output changes the layout (tokens out of a 4D input) is turned back into the
    input's layout before mixing, so paths of different layouts can be summed.
    """

    def __init__(self, places: Mapping[str, PlaceCandidates], block_types: tuple[str, ...]) -> None:
        super().__init__(places)
        self.paths = tuple(block_types) + (IDENTITY,)
        self.alpha = nn.Parameter(torch.zeros(len(self.paths)))
        self.active = None  # identity until an architecture is set
        self.mode = "fixed"
        self.tau = 1.0

    def activate_identity(self) -> None:
        self.active = None

    def path_weights(self) -> torch.Tensor:
        return F.softmax(self.alpha, dim=0)

    def importance(self) -> float:
        """EfficientFormer V1 importance of this slot, normalised to 1 under uniform weights
        (`supernet.importance.slot_importance`: mean non-identity weight / identity weight)."""
        return slot_importance(self.path_weights().detach().tolist())

    def _run_path(self, index: int, x: torch.Tensor) -> torch.Tensor:
        path = self.paths[index]
        if path == IDENTITY:
            return x
        out = self.candidates[_module_key(path)](x)
        if out.dim() == 3 and x.dim() == 4:  # a token block fed a map: back to the map's layout
            batch, channels, height, width = x.shape
            out = out.transpose(1, 2).reshape(batch, out.shape[-1], height, width)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "fixed":
            return x if self.active is None else self.candidates[self.active](x)
        if self.mode == "gumbel":
            weights = F.gumbel_softmax(self.alpha, tau=self.tau, hard=False)
            return sum(weight * self._run_path(i, x) for i, weight in enumerate(weights))
        weights = F.gumbel_softmax(self.alpha, tau=self.tau, hard=True)  # one-hot, straight-through gradient
        index = int(weights.argmax())
        return weights[index] * self._run_path(index, x)


class Supernet(Network):
    """Shared weights for every architecture of one space at one resolution and class count.

    Contract: after `set_arch(arch)`, in eval mode, `supernet(x)` equals `extract(arch)(x)` to
    float tolerance, and `extract(arch).state_dict()` loads into `build_model(arch)`.
    `set_arch` changes which weights run, never the weights; pricing or describing an architecture
    needs no supernet (that is `search_spaces`).
    """

    def __init__(self, space: SearchSpace, num_classes: int, resolution: int) -> None:
        probe = space.largest(resolution, num_classes)
        space.validate(probe)  # a bad resolution fails here, with the field named
        places = place_candidates(space, resolution, num_classes)
        by_where: dict[str, dict[str, PlaceCandidates]] = {}
        for (where, kind), candidates in places.items():
            by_where.setdefault(where, {})[kind] = candidates
        stem = LayerChoice(by_where["stem"])
        stages = []
        for index, choices in enumerate(space.stages):
            downsample = LayerChoice(by_where[f"stages.{index}.downsample"]) if index else nn.Identity()
            slots = [
                MetaPath(by_where.get(f"stages.{index}.blocks.{slot}", {}), choices.block_types)
                for slot in range(choices.max_depth)
            ]
            stages.append(NetworkStage(downsample, slots))
        super().__init__(stem, stages, LayerChoice(by_where["head"]))  # the forward is Network's
        self.space, self.num_classes, self.resolution = space, num_classes, resolution
        self.arch: Architecture | None = None
        self.set_arch(probe)

    @classmethod
    def from_space(cls, space: SearchSpace | str, num_classes: int = 1000, resolution: int | None = None) -> "Supernet":
        space = get_space(space) if isinstance(space, str) else space
        return cls(space, num_classes, resolution or space.default_resolution)

    @property
    def device(self) -> torch.device:
        """Where the shared weights are (`supernet.to(...)` moves them); extracted networks are built there."""
        return next(self.parameters()).device

    # -- places ------------------------------------------------------------------------------
    def place(self, where: str) -> LayerChoice:
        """The supernet place a spec's `where` names (stem, head, a downsample or a block slot)."""
        return super().place(where)

    def metapaths(self) -> Iterator[tuple[tuple[int, int], MetaPath]]:
        for index, stage in enumerate(self.stages):
            for slot, path in enumerate(stage.blocks):
                yield (index, slot), path

    # -- activation --------------------------------------------------------------------------
    def _check_arch(self, arch: Architecture) -> None:
        self.space.validate(arch)
        if arch.resolution != self.resolution:
            raise ArchitectureError("resolution", f"{arch.resolution}, but this supernet is built for {self.resolution}")
        if arch.num_classes != self.num_classes:
            raise ArchitectureError("num_classes", f"{arch.num_classes}, but this supernet has {self.num_classes}")

    def fit(self, arch: Architecture) -> Architecture:
        """`arch` at this supernet's resolution and class count (architectures are resolution-free)."""
        return dataclasses.replace(arch, resolution=self.resolution, num_classes=self.num_classes)

    def set_arch(self, arch: Architecture) -> None:
        """Activate the sub-network `arch` (validated; resolution and classes must match)."""
        self._check_arch(arch)
        for _, path in self.metapaths():
            path.activate_identity()
        for spec in self.space.layer_specs(arch):
            self.place(spec.where).activate(spec)
        self.arch = arch
        if self.mode != "fixed":
            self._configure_all_paths(arch)

    # -- Gumbel modes ------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return next(path.mode for _, path in self.metapaths())

    def set_mode(self, mode: str, tau: float = 1.0) -> None:
        """`fixed`, `gumbel` (soft mixture at temperature `tau`) or `gumbel_hard` (sampled path)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        changed = mode != self.mode
        for _, path in self.metapaths():
            path.mode, path.tau = mode, tau
        if changed and self.arch is not None:
            self.set_arch(self.arch)  # fixed: back to the architecture's own layers; else size every path

    def _configure_all_paths(self, arch: Architecture) -> None:
        """Size every path of every slot for `arch`'s widths so that all of them can run.

        Each path is configured as the layer it would be if its slot held that block type and
        every other block of the network were its stage's first (conv-style) type: the layout a
        mixture keeps, since `MetaPath` returns every path's output in its input's layout.
        """
        base_stages = []
        for index, stage in enumerate(arch.stages):
            choices = self.space.stages[index]
            blocks = []
            for slot in range(choices.max_depth):
                block = stage.blocks[slot] if slot < len(stage.blocks) else None
                blocks.append(self._block_like(index, stage.width, choices.block_types[0], block))
            base_stages.append(dataclasses.replace(stage, blocks=tuple(blocks)))
        base = Architecture(arch.space, arch.resolution, arch.num_classes, tuple(base_stages))
        for spec in self.space.layer_specs(base):
            if ".blocks." not in spec.where:
                self.place(spec.where).activate(spec)
        for (index, slot), path in self.metapaths():
            for type_name in path.paths[:-1]:
                block = self._block_like(index, base.stages[index].width, type_name, base.stages[index].blocks[slot])
                probe = base.replace_stage(
                    index,
                    dataclasses.replace(
                        base.stages[index],
                        blocks=base.stages[index].blocks[:slot] + (block,) + base.stages[index].blocks[slot + 1 :],
                    ),
                )
                where = f"stages.{index}.blocks.{slot}"
                spec = next(s for s in self.space.layer_specs(probe) if s.where == where)
                _configure(path.module_for(type_name), twin(spec))

    def _block_like(self, index: int, width: int, type_name: str, template: Block | None) -> Block:
        """A `type_name` block with `template`'s knobs where it has valid ones, else the largest."""
        choices, knobs = self.space.stages[index], {}
        for knob in self.space.block_type(type_name).knobs():
            valid = self.space.knob_choices(choices, width, knob)
            value = getattr(template, knob) if template is not None else None
            knobs[knob] = value if value in valid else max(valid)
        return Block(type_name, **knobs)

    def arch_parameters(self) -> list[nn.Parameter]:
        """The MetaPath logits α (train them with their own optimizer)."""
        return [path.alpha for _, path in self.metapaths()]

    def weight_parameters(self) -> list[nn.Parameter]:
        alphas = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in alphas]

    def importance(self) -> MetaPathImportance:
        """V1 importance per slot and per stage from the α logits (`supernet.importance`);
        `trained` says whether any α moved from its initial zero (a Gumbel-trained supernet)."""
        weights = {key: path.path_weights().detach().tolist() for key, path in self.metapaths()}
        return MetaPathImportance.from_path_weights(weights, trained=self.has_trained_alpha())

    def has_trained_alpha(self) -> bool:
        """Whether the MetaPath logits were trained (`--mode gumbel`); sandwich training never moves them."""
        return any(bool(alpha.detach().ne(0).any()) for alpha in self.arch_parameters())

    # -- extracting ---------------------------------------------------------------------------
    def extract(self, arch: Architecture) -> Network:
        """A static network of `arch` (the classes `build_model` makes) holding the shared weights."""
        self._check_arch(arch)

        device = self.device

        def make(spec: LayerSpec) -> nn.Module:
            static = build_layer(spec).to(device)  # built where the shared weights are, so copies stay on it
            _export(self.place(spec.where).module_for(spec.kind), static)
            return static

        network = assemble(arch, self.space.layer_specs(arch), make)
        return network.train(self.training)

    # -- checkpoints -------------------------------------------------------------------------
    def save(self, path: str | Path, extra: Mapping[str, Any] | None = None) -> None:
        """Write weights, every switchable BN, the α logits and the space atomically to `path`, with
        the content digest of `supernet.checkpoint` (non-finite weights are refused, nothing written)."""
        payload = {
            "format": CHECKPOINT_FORMAT,
            "space": self.space.name,
            "latnas_version": search_spaces.__version__,
            "resolution": self.resolution,
            "num_classes": self.num_classes,
            "arch_logits": {f"{i}.{s}": path.alpha.detach().clone() for (i, s), path in self.metapaths()},
            "state_dict": self.state_dict(),
            "extra": dict(extra or {}),
        }
        write_checkpoint(path, payload)

    @classmethod
    def load(cls, path: str | Path, space: str | None = None, option: str = "") -> "Supernet":
        """Read a checkpoint written by `save` (see `read_checkpoint`); `space`, when given, must
        match the file's. Every refusal is a one-line `CheckpointError` naming the file."""
        payload = read_checkpoint(path, option)
        label = checkpoint_label(path, option)
        if space is not None and payload["space"] != space:
            raise CheckpointError(f"{label}: a supernet of space {payload['space']!r}, not {space!r}")
        net = cls.from_space(payload["space"], payload["num_classes"], payload["resolution"])
        try:
            net.load_state_dict(payload["state_dict"])
        except (RuntimeError, TypeError, ValueError, KeyError, AttributeError) as error:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise CheckpointError(f"{label}: weights do not fit this version of the {payload['space']} supernet "
                                  f"({first[:200]})") from None
        return net


def read_checkpoint(path: str | Path, option: str = "") -> dict[str, Any]:
    """The payload of a supernet checkpoint, or `CheckpointError` with one line naming the file.

    Checked by `supernet.checkpoint.load_checkpoint` (regular file within the size cap, loaded with
    `weights_only=True`, the content digest when the file has one, finite tensors; a legacy file
    without a digest is accepted when finite), then its fields: a known space, a resolution in
    `RESOLUTION` that the space accepts, a class count in `NUM_CLASSES`, a state dict of tensors.
    `option` (e.g. "--resume") prefixes messages with the option that named the file.
    """
    payload = load_checkpoint(path, CHECKPOINT_FORMAT, "supernet", option)
    label = checkpoint_label(path, option)
    missing = [key for key in ("space", "resolution", "num_classes", "state_dict") if key not in payload]
    if missing:
        raise CheckpointError(f"{label}: checkpoint lacks {', '.join(missing)}")
    space, resolution, num_classes = payload["space"], payload["resolution"], payload["num_classes"]
    if not isinstance(space, str) or space not in list_spaces():
        raise CheckpointError(f"{label}: space {shown(space)} is not one of {', '.join(list_spaces())}")
    multiple = get_space(space).resolution_multiple
    if resolution not in RESOLUTION or resolution % multiple:
        raise CheckpointError(f"{label}: resolution {shown(resolution)} is not an input size of {space} "
                              f"(a multiple of {multiple} in {RESOLUTION.low}..{RESOLUTION.high} px)")
    if num_classes not in NUM_CLASSES:
        raise CheckpointError(f"{label}: num_classes {shown(num_classes)} is not {NUM_CLASSES.describe()}")
    weights = payload["state_dict"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{label}: state_dict is not a mapping of tensors")
    if "extra" in payload and not isinstance(payload["extra"], dict):
        raise CheckpointError(f"{label}: extra is not a mapping")
    return payload
