"""Layer specs: the unit that is built, profiled, priced and counted.

A network is the ordered list of its `LayerSpec`s (stem, each downsample, each non-identity block,
head). A spec holds every shape parameter that changes the layer's latency and nothing else, so
`spec.key()` is the one string under which a latency table stores the layer; the same spec builds
the module (`build_layer`) and prices it analytically (`layer_cost`), so the profiler, the
predictor, the parameter count and the model can never disagree about what a layer is.

Layer kinds are registered by the block families (`register_layer_kind`): a builder that turns a
spec and an `Ops` factory into a module, and a cost function that counts parameters, MACs and
operations from the spec's shapes alone.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Union

if TYPE_CHECKING:  # torch is only needed to build modules, not to describe or price them
    from torch import nn

    from search_spaces.ops import Ops

OptionValue = Union[int, float, str, bool]

# Operation classes an analytic device model prices separately (see `OpCount`).
OP_CLASSES = (
    "conv",  # dense convolution (incl. 1x1), MACs
    "dwconv",  # depthwise convolution / depthwise transposed convolution, MACs
    "linear",  # fully connected layer on tokens, MACs
    "matmul",  # activation x activation products (attention scores and weighted sums), MACs
    "norm",  # BatchNorm / LayerNorm applications, elements
    "activation",  # GELU / ReLU / softmax, elements
    "elementwise",  # additions, multiplications (residuals, layer scale), pooling, elements
    "reshape",  # layout changes between 4D and token layouts, permutes, upsampling copies, elements
)


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
class OpCount:
    """How much work of one operation class a layer does.

    `calls` is the number of separate operations (kernel launches) of that class, `macs` the
    multiply-accumulates (compute classes), `elements` the elements written (memory-bound classes).
    """

    op: str
    calls: int = 0
    macs: int = 0
    elements: int = 0

    def __post_init__(self) -> None:
        if self.op not in OP_CLASSES:
            raise ValueError(f"op class {self.op!r} is not one of {', '.join(OP_CLASSES)}")


@dataclass(frozen=True)
class LayerCost:
    """Analytic cost of one layer, computed from its spec's shapes without building it.

    `params` equals the parameter count of the module `build_layer` makes; `macs` follows the
    EfficientFormer toolbox convention (conv + linear + attention matmuls, BN folded, norms and
    activations not counted); `ops` breaks the work down by operation class, one entry per class.
    """

    params: int
    macs: int
    ops: tuple[OpCount, ...] = ()

    def op(self, name: str) -> OpCount:
        for count in self.ops:
            if count.op == name:
                return count
        return OpCount(name)


class OpTally:
    """Accumulates `OpCount`s while a cost function walks a layer's operations."""

    def __init__(self) -> None:
        self._calls: dict[str, int] = {}
        self._macs: dict[str, int] = {}
        self._elements: dict[str, int] = {}
        self.params = 0

    def add(self, op: str, *, macs: int = 0, elements: int = 0, calls: int = 1, params: int = 0) -> None:
        if op not in OP_CLASSES:
            raise ValueError(f"op class {op!r} is not one of {', '.join(OP_CLASSES)}")
        self._calls[op] = self._calls.get(op, 0) + calls
        self._macs[op] = self._macs.get(op, 0) + macs
        self._elements[op] = self._elements.get(op, 0) + elements
        self.params += params

    def cost(self) -> LayerCost:
        ops = tuple(
            OpCount(op, self._calls[op], self._macs[op], self._elements[op]) for op in OP_CLASSES if op in self._calls
        )
        macs = sum(count.macs for count in ops if count.op in ("conv", "dwconv", "linear", "matmul"))
        return LayerCost(self.params, macs, ops)


@dataclass(frozen=True)
class LayerKind:
    """A registered layer kind: how to build a spec of it and how to price it from shapes."""

    name: str
    build: "Callable[[LayerSpec, Ops], nn.Module]"
    cost: Callable[[LayerSpec], LayerCost]


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


@functools.lru_cache(maxsize=1 << 16)
def layer_cost(spec: LayerSpec) -> LayerCost:
    """Params, MACs and op counts of one spec (a pure function of its shapes, so it is memoised:
    a search prices the same few thousand specs over and over)."""
    return get_layer_kind(spec.kind).cost(spec)


def total_cost(specs: Iterable[LayerSpec]) -> LayerCost:
    """Sum of the costs of several layers, ops merged per class."""
    params = 0
    totals: dict[str, list[int]] = {}
    for spec in specs:
        cost = layer_cost(spec)
        params += cost.params
        for count in cost.ops:
            entry = totals.setdefault(count.op, [0, 0, 0])
            entry[0] += count.calls
            entry[1] += count.macs
            entry[2] += count.elements
    ops = tuple(OpCount(op, *totals[op]) for op in OP_CLASSES if op in totals)
    macs = sum(count.macs for count in ops if count.op in ("conv", "dwconv", "linear", "matmul"))
    return LayerCost(params, macs, ops)


def specs_by_key(specs: Iterable[LayerSpec]) -> Mapping[str, LayerSpec]:
    """Distinct specs, first occurrence of each key kept, in order."""
    distinct: dict[str, LayerSpec] = {}
    for spec in specs:
        distinct.setdefault(spec.key(), spec)
    return distinct
