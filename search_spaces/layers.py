"""Layer specs: the unit that is built, profiled, priced and counted.

A network is the ordered list of its `LayerSpec`s (stem, each downsample, each non-identity block,
head). A spec holds every shape parameter that changes the layer's latency and nothing else, so
`spec.key()` is the one string under which a latency table stores the layer; the same spec builds
the module (`build_layer`) that is profiled and, traced on meta tensors, counted (`layer_cost`:
params, MACs and per-class op counts, `search_spaces.tracing`), so the profiler, the predictor,
the parameter count and the device model can never disagree about what a layer is. Nothing about a
block is written twice: its module is the only description of it.

Layer kinds are registered by the block families (`register_layer_kind`): a builder that turns a
spec and an `Ops` factory into a module.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Union

from search_spaces.tracing import LayerCost, OpCount, combine

if TYPE_CHECKING:  # torch is only needed to build modules and trace them, not to describe them
    from torch import nn

    from search_spaces.ops import Ops

OptionValue = Union[int, float, str, bool]

@dataclass(frozen=True)
class LayerSpec:
    """One profiled unit of a network with every shape parameter that affects its latency.

    `kind` names a registered layer kind (a block type such as `ffn`, or a fixed part such as
    `efficientformer_v2.stem`); `input_size` is the (height, width) of the layer's input;
    `options` carries family-specific shape knobs (kernel size, sample ratio, layout flags) as
    sorted `(name, value)` pairs. `where` says where the layer sits in the network
    (`stages.2.blocks.4`); it is not part of the key or of equality.
    """

    kind: str
    in_channels: int
    out_channels: int
    input_size: tuple[int, int]
    stride: int = 1
    expansion: int | None = None
    heads: int | None = None
    options: tuple[tuple[str, OptionValue], ...] = ()
    where: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", tuple(self.input_size))
        object.__setattr__(self, "options", tuple(sorted(dict(self.options).items())))

    def option(self, name: str, default: OptionValue | None = None) -> OptionValue | None:
        return dict(self.options).get(name, default)

    def input_shape(self, batch: int = 1) -> tuple[int, ...]:
        """The input tensor shape of the spec's module: an NCHW map, or (B, N, C) tokens. A spec
        does not state its input layout in general; the families whose layers take tokens say so
        in options (EfficientFormer V1: `from_tokens` on the downsample and head, `to_tokens=0` on
        a `meta3d` block that continues a token sequence)."""
        height, width = self.input_size
        if self.option("from_tokens", False) or self.option("to_tokens") is False:
            return (batch, height * width, self.in_channels)
        return (batch, self.in_channels, height, width)

    @property
    def output_size(self) -> tuple[int, int]:
        height, width = self.input_size
        return (height // self.stride, width // self.stride)

    def key(self) -> str:
        """A stable, readable identifier: the same spec gives the same key in every run and version."""
        height, width = self.input_size
        parts = [self.kind, f"c{self.in_channels}-{self.out_channels}", f"hw{height}x{width}", f"s{self.stride}"]
        if self.expansion is not None:
            parts.append(f"e{self.expansion}")
        if self.heads is not None:
            parts.append(f"h{self.heads}")
        parts.extend(f"{name}={_format_option(value)}" for name, value in self.options)
        return ":".join(parts)


def _format_option(value: OptionValue) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


@dataclass(frozen=True)
class LayerKind:
    """A registered layer kind: how to build the module of a spec of it."""

    name: str
    build: "Callable[[LayerSpec, Ops], nn.Module]"


_LAYER_KINDS: dict[str, LayerKind] = {}


def register_layer_kind(kind: LayerKind) -> LayerKind:
    if kind.name in _LAYER_KINDS and _LAYER_KINDS[kind.name] is not kind:
        raise ValueError(f"layer kind {kind.name!r} is registered twice")
    _LAYER_KINDS[kind.name] = kind
    return kind


def get_layer_kind(name: str) -> LayerKind:
    if name not in _LAYER_KINDS:
        from search_spaces.registry import load_all_families

        load_all_families()
    try:
        return _LAYER_KINDS[name]
    except KeyError:
        raise KeyError(f"unknown layer kind {name!r}; registered: {', '.join(sorted(_LAYER_KINDS))}") from None


def build_layer(spec: LayerSpec, ops: "Ops | None" = None) -> "nn.Module":
    """The module of one spec, made of `ops` (plain torch layers by default)."""
    if ops is None:
        from search_spaces.ops import STATIC_OPS

        ops = STATIC_OPS
    return get_layer_kind(spec.kind).build(spec, ops)


class _CostStore:
    """Traced layer costs kept between processes, so a fresh search does not trace again.

    Tracing a layer takes ~15 ms, and the first trace of a process ~2 s (torch loads its meta
    kernels), while a search prices hundreds of layers: the costs are stored by spec key in
    `$LATNAS_CACHE/layer-costs-<fingerprint>.json` (default `~/.cache/latnas`), read once per
    process and merged back, atomically, when the process ends. The fingerprint hashes the source
    of `search_spaces` (every block), the latnas and torch versions: a change to any block makes a
    new file, never a stale cost. Set `LATNAS_CACHE=off` to keep nothing on disk.
    """

    def __init__(self) -> None:
        self.costs: dict[str, LayerCost] | None = None
        self.added: dict[str, LayerCost] = {}

    @staticmethod
    def path() -> Path | None:
        import hashlib
        import os

        import torch

        import search_spaces

        folder = os.environ.get("LATNAS_CACHE", "")
        if folder.lower() == "off":
            return None
        digest = hashlib.sha256(f"{search_spaces.__version__}|{torch.__version__}".encode())
        package = Path(search_spaces.__file__).parent
        for source in sorted(package.rglob("*.py")):
            digest.update(source.relative_to(package).as_posix().encode() + source.read_bytes())
        base = Path(folder) if folder else Path.home() / ".cache" / "latnas"
        return base / f"layer-costs-{digest.hexdigest()[:16]}.json"

    def _read(self, path) -> dict[str, LayerCost]:
        import json

        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return {key: LayerCost(int(params), int(macs), tuple(OpCount(*count) for count in ops), (), int(tokens))
                    for key, (params, macs, ops, tokens) in data.items()}
        except (OSError, ValueError, TypeError):  # missing, half-written by a crash, foreign: trace again
            return {}

    def get(self, key: str) -> LayerCost | None:
        if self.costs is None:
            path = self.path()
            self.costs = self._read(path) if path is not None and path.is_file() else {}
            if path is not None:
                import atexit

                atexit.register(self.save)
        return self.costs.get(key)

    def put(self, key: str, cost: LayerCost) -> None:
        if self.costs is not None:
            self.costs[key] = cost
        self.added[key] = cost

    def save(self) -> None:
        import json

        from search_spaces.files import write_text_atomic

        path = self.path()
        if not self.added or path is None:
            return
        merged = {**(self._read(path) if path.is_file() else {}), **self.added}
        data = {key: [cost.params, cost.macs, [[c.op, c.calls, c.macs, c.elements] for c in cost.ops], cost.token_elements]
                for key, cost in merged.items() if not cost.unclassified}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, json.dumps(data, separators=(",", ":")))
        except OSError:
            pass  # a read-only home: the costs are traced again next time, nothing else is lost
        self.added = {}


_STORE = _CostStore()


@functools.lru_cache(maxsize=1 << 16)
def layer_cost(spec: LayerSpec) -> LayerCost:
    """Params, MACs and op counts of one spec, from a trace of `build_layer(spec)` on meta tensors
    (`search_spaces.tracing`). A pure function of the spec, so it is memoised, in the process and
    on disk (`_CostStore`): a search prices the same few thousand specs over and over."""
    key = spec.key()
    stored = _STORE.get(key)
    if stored is not None:
        return stored
    import torch

    from search_spaces.tracing import trace_costs

    with torch.device("meta"):
        module = build_layer(spec)
    cost = trace_costs(module, spec.input_shape())
    _STORE.put(key, cost)
    return cost


def total_cost(specs: Iterable[LayerSpec]) -> LayerCost:
    """Sum of the costs of several layers, ops merged per class."""
    return combine(layer_cost(spec) for spec in specs)


def specs_by_key(specs: Iterable[LayerSpec]) -> Mapping[str, LayerSpec]:
    """Distinct specs, first occurrence of each key kept, in order."""
    distinct: dict[str, LayerSpec] = {}
    for spec in specs:
        distinct.setdefault(spec.key(), spec)
    return distinct
