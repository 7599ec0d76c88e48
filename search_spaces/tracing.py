"""Op counts of any module, read from a trace on meta tensors, never written by hand.

`trace_costs(module, input_shape)` runs the module's forward on meta tensors (no memory, no
arithmetic) under a `TorchDispatchMode` that sees every ATen op the forward dispatches, with its
arguments and output shapes, and sorts each into an op class (`OP_CLASSES`):

- `conv` / `dwconv`: `aten.convolution` with groups 1 (or any other grouping) / with one channel
  per group (depthwise, transposed or not); MACs = outputs × inputs per group × kernel area
  (transposed: inputs × outputs per group × kernel area);
- `linear` / `matmul`: `mm`, `addmm`, `bmm`, `baddbmm` whose operand is (a view of) a parameter /
  of two activations (attention scores and weighted sums); MACs = M × K × N (× batch);
- `batchnorm` / `layernorm`: inference BatchNorm / LayerNorm, and the reductions that make up a
  LayerNorm-like normalisation (the L2 norm of XCA, a mean or variance kept as a dimension to
  broadcast back: `keepdim`); elements = outputs;
- `activation`: GELU, ReLU(6), HardSwish, SiLU, sigmoid, tanh, erf, softmax;
- `elementwise`: additions, multiplications, divisions, clamps, pooling (a reduction that drops its
  dimensions, such as a mean over the positions, is global average pooling), sin/cos;
- `layout`: permutes and transposes of activations, concatenations, upsampling, padding, gathers
  of activations: the layout changes a mobile runtime executes as separate copies.

Besides the classes, a trace counts `token_elements`: the elements written by channels-last work,
that is every LayerNorm (it normalises the last axis) and every element-wise, activation or
layout op on a token sequence (a 3-D batch × tokens × channels tensor). Mobile accelerators compute
in a channels-first 4D layout; channels-last work runs outside it (`lut.analytic` prices it so).

Views (`view`, `reshape` of a contiguous tensor, `slice`, `unsqueeze`, `expand`...), the copies
that materialise an already counted permute (`clone`), and anything computed only from
parameters and sizes (a weight transpose, an attention-bias gather, EdgeNeXt's Fourier
positional features and their projection) cost nothing: a deployed graph folds them into
constants. An ATen op the tracer does not know is recorded in
`unclassified` rather than priced at zero silently; the tests keep that set empty for every
layer of every space.

MACs follow the EfficientFormer toolbox convention: convolutions, linears and attention matmuls of
the forward, BatchNorm folded, norms and activations not counted; a convolution a deployed graph
folds into a constant (EdgeNeXt's positional projection) still counts, as the published counts
include it, though it is not priced. Params are the module's own (`sum(p.numel())`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:
    from torch import nn

OP_CLASSES = (
    "conv",  # dense (or grouped) convolution, MACs
    "dwconv",  # depthwise convolution (one channel per group), transposed or not, MACs
    "linear",  # activation x weight products, MACs
    "matmul",  # activation x activation products (attention), MACs
    "batchnorm",  # inference BatchNorm (foldable into a neighbouring convolution), elements
    "layernorm",  # LayerNorm and LayerNorm-like reductions over channels (XCA's L2 norm), elements
    "activation",  # GELU / ReLU / HardSwish / softmax ..., elements
    "elementwise",  # additions, multiplications, pooling, elements
    "layout",  # permutes, transposes, concatenations, upsampling copies of activations, elements
)
COMPUTE_CLASSES = ("conv", "dwconv", "linear", "matmul")

_CONVOLUTIONS = {"convolution", "_convolution", "conv2d", "conv_transpose2d"}
_PRODUCTS = {"mm", "addmm", "bmm", "baddbmm"}
_BATCHNORMS = {"_native_batch_norm_legit_no_training", "native_batch_norm", "batch_norm", "_native_batch_norm_legit"}
_LAYERNORMS = {"native_layer_norm", "layer_norm"}
_REDUCTIONS = {"mean", "sum", "var", "var_mean", "linalg_vector_norm", "norm", "std", "amax"}
_ACTIVATIONS = {"gelu", "relu", "relu_", "hardtanh", "hardtanh_", "hardswish", "hardswish_", "silu", "silu_", "sigmoid",
                "tanh", "erf", "_softmax", "softmax", "_log_softmax", "leaky_relu", "elu"}
_ELEMENTWISE = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "neg", "rsub", "clamp", "clamp_min",
                "clamp_max", "sqrt", "rsqrt", "pow", "exp", "log", "abs", "sin", "cos", "where", "maximum", "minimum",
                "avg_pool2d", "max_pool2d", "max_pool2d_with_indices", "adaptive_avg_pool2d", "_adaptive_avg_pool2d",
                "reciprocal", "square", "masked_fill", "fill", "addcmul", "lerp"}
_LAYOUT = {"permute", "transpose", "t", "cat", "stack", "upsample_bilinear2d", "upsample_nearest2d", "constant_pad_nd",
           "pad", "index", "gather", "roll", "flip", "pixel_shuffle", "index_select", "repeat"}
#: views and bookkeeping: no data moves (or the move is a permute already counted)
_FREE = {"view", "_unsafe_view", "reshape", "expand", "slice", "select", "unsqueeze", "squeeze", "as_strided",
         "alias", "detach", "split", "split_with_sizes", "unbind", "chunk", "narrow", "clone", "contiguous", "_to_copy",
         "copy_", "empty", "empty_like", "zeros", "zeros_like", "ones", "ones_like", "full", "full_like", "arange",
         "scalar_tensor", "lift_fresh", "lift_fresh_copy", "new_empty", "new_zeros", "new_ones", "empty_strided",
         "t_", "_reshape_alias", "view_as", "flatten", "unflatten", "movedim", "sym_size", "sym_stride", "sym_numel",
         "is_same_size", "dim", "size", "stride", "item", "_local_scalar_dense", "floor_divide", "div_floor",
         "_assert_tensor_metadata", "linspace", "meshgrid"}
#: ops that make a tensor from nothing but sizes: constants in a deployed graph
_CREATION = {"empty", "zeros", "ones", "full", "arange", "linspace", "scalar_tensor", "empty_strided", "new_empty",
             "new_zeros", "new_ones", "lift_fresh", "lift_fresh_copy"}


@dataclass(frozen=True)
class OpCount:
    """How much work of one op class a module does: `calls` separate operations (kernel
    launches), `macs` multiply-accumulates (compute classes), `elements` written."""

    op: str
    calls: int = 0
    macs: int = 0
    elements: int = 0

    def __post_init__(self) -> None:
        if self.op not in OP_CLASSES:
            raise ValueError(f"op class {self.op!r} is not one of {', '.join(OP_CLASSES)}")


@dataclass(frozen=True)
class LayerCost:
    """Params, MACs and per-class op counts of a module (a layer, or a network: `combine`), plus
    the ATen ops a trace met but could not classify (empty for every layer the spaces build).
    `params` equals the module's `sum(p.numel())`; `macs` follows the EfficientFormer toolbox
    convention (the module docstring)."""

    params: int
    macs: int
    ops: tuple[OpCount, ...] = ()
    unclassified: tuple[str, ...] = ()
    token_elements: int = 0

    def op(self, name: str) -> OpCount:
        for count in self.ops:
            if count.op == name:
                return count
        return OpCount(name)


def combine(costs: Iterable[LayerCost]) -> LayerCost:
    """The sum of several costs, ops merged per class (a network from its layers)."""
    params, macs, totals, unknown, tokens = 0, 0, defaultdict(lambda: [0, 0, 0]), set(), 0
    for cost in costs:
        params += cost.params
        macs += cost.macs
        tokens += cost.token_elements
        unknown.update(cost.unclassified)
        for count in cost.ops:
            entry = totals[count.op]
            entry[0] += count.calls
            entry[1] += count.macs
            entry[2] += count.elements
    ops = tuple(OpCount(op, *totals[op]) for op in OP_CLASSES if op in totals)
    return LayerCost(params, macs, ops, tuple(sorted(unknown)), tokens)


def cost_from_counts(params: int, counts: Mapping[str, tuple[int, int, int]], unclassified: Iterable[str] = (),
                     token_elements: int = 0) -> LayerCost:
    """A cost from {op class: (calls, macs, elements)} (e.g. read from an ONNX graph)."""
    ops = tuple(OpCount(op, *counts[op]) for op in OP_CLASSES if op in counts)
    return LayerCost(params, sum(c.macs for c in ops if c.op in COMPUTE_CLASSES), ops, tuple(sorted(set(unclassified))),
                     int(token_elements))


#: the classes whose work on a token sequence (or, for LayerNorm, anywhere) is channels-last work
CHANNELS_LAST_CLASSES = ("layernorm", "elementwise", "activation", "layout")


def is_channels_last(op: str, rank: int) -> bool:
    """Whether an op of class `op` writing a tensor of `rank` dimensions is channels-last work."""
    return op == "layernorm" or (op in CHANNELS_LAST_CLASSES and rank == 3)


def _flat(values) -> list:
    """Arguments with the tensors of list arguments (`cat`, `stack`) spread out."""
    flat = []
    for value in values:
        if isinstance(value, (list, tuple)):
            flat.extend(_flat(value))
        else:
            flat.append(value)
    return flat


def _name(func) -> str:
    return func.overloadpacket.__name__ if hasattr(func, "overloadpacket") else str(func)


def _numel(value) -> int:
    import torch

    if isinstance(value, torch.Tensor):
        return int(value.numel())
    if isinstance(value, (tuple, list)):
        return sum(_numel(item) for item in value)
    return 0


def _keeps_dimensions(func, args: tuple, kwargs: Mapping[str, Any]) -> bool:
    """Whether a reduction keeps its reduced dimensions (`keepdim`): a normalisation does, to
    broadcast its statistic back over what it normalises; global pooling does not."""
    if "keepdim" in kwargs:
        return bool(kwargs["keepdim"])
    for index, argument in enumerate(func._schema.arguments):
        if argument.name == "keepdim":
            return bool(args[index]) if index < len(args) else bool(argument.default_value)
    return False


class _Recorder:
    """The dispatch mode's bookkeeping: per-class counts and which tensors are parameters."""

    def __init__(self, parameters: Iterable[Any]) -> None:
        self.counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        self.unclassified: set[str] = set()
        self.token_elements = 0
        self.folded_macs = 0  # MACs of convolutions / products computed from constants only
        self._constant: dict[int, Any] = {id(p): p for p in parameters}  # ids of parameter-derived tensors (kept alive)
        self._linear: dict[int, Any] = {}  # outputs of linear layers (and views of them), to find their bias adds

    def constant(self, value) -> bool:
        import torch

        return isinstance(value, torch.Tensor) and id(value) in self._constant

    def mark(self, output) -> None:
        import torch

        if isinstance(output, torch.Tensor):
            self._constant[id(output)] = output
        elif isinstance(output, (tuple, list)):
            for item in output:
                self.mark(item)

    def add(self, op: str, output, macs: int = 0) -> None:
        import torch

        entry = self.counts[op]
        entry[0] += 1
        entry[1] += int(macs)
        entry[2] += _numel(output)
        if isinstance(output, torch.Tensor) and is_channels_last(op, output.dim()):
            self.token_elements += int(output.numel())

    def record(self, func, args: tuple, kwargs: Mapping[str, Any], output) -> None:
        import torch

        name = _name(func)
        tensors = [a for a in _flat(args) if isinstance(a, torch.Tensor)]
        if (tensors and all(self.constant(t) for t in tensors)) or (not tensors and name in _CREATION):
            self.mark(output)  # computed from parameters and sizes only: a constant in a deployed graph
            if name in _CONVOLUTIONS:
                self.folded_macs += _numel(output) * int(args[1].shape[1]) * int(args[1][0, 0].numel())
            return
        if name in _CONVOLUTIONS:
            weight, transposed, groups = args[1], bool(args[6]), int(args[8])
            kernel = int(weight.shape[2]) * int(weight.shape[3]) if weight.dim() == 4 else 1
            per_group = int(weight.shape[1])
            if transposed:
                macs, depthwise = _numel(args[0]) * per_group * kernel, per_group == 1 and groups > 1
            else:
                macs, depthwise = _numel(output) * per_group * kernel, per_group == 1 and groups > 1
            self.add("dwconv" if depthwise else "conv", output, macs)
        elif name in _PRODUCTS:
            a, b = (args[1], args[2]) if name in ("addmm", "baddbmm") else (args[0], args[1])
            batch = int(a.shape[0]) if a.dim() == 3 else 1
            m, k, n = int(a.shape[-2]), int(a.shape[-1]), int(b.shape[-1])
            linear = self.constant(a) or self.constant(b)
            self.add("linear" if linear else "matmul", output, batch * m * k * n)
            if linear:
                self._linear[id(output)] = output
        elif name in ("add", "add_") and len(tensors) == 2 and any(id(t) in self._linear for t in tensors) and any(
                self.constant(t) and t.dim() == 1 for t in tensors):
            return  # a linear layer's bias, added after its product (torch does so for 3-D inputs): part of it
        elif name in _FREE and tensors and id(tensors[0]) in self._linear:
            if isinstance(output, torch.Tensor):
                self._linear[id(output)] = output  # a view of a linear layer's output still ends in its bias add
        elif name in _BATCHNORMS:
            self.add("batchnorm", output[0] if isinstance(output, (tuple, list)) else output)
        elif name in _LAYERNORMS:
            self.add("layernorm", output[0] if isinstance(output, (tuple, list)) else output)
        elif name in _REDUCTIONS:
            self.add("layernorm" if _keeps_dimensions(func, args, kwargs) else "elementwise", output)
        elif name in _ACTIVATIONS:
            self.add("activation", output)
        elif name in _ELEMENTWISE:
            self.add("elementwise", output)
        elif name in _LAYOUT:
            self.add("layout", output)
        elif name not in _FREE:
            self.unclassified.add(name)


def trace_costs(module: "nn.Module", input_shape: tuple[int, ...]) -> LayerCost:
    """Params, MACs and per-class op counts of `module`'s eval forward on an input of `input_shape`.

    The module is moved to the meta device for the trace (a copy: the caller's module is left as
    it is); nothing is computed, so tracing a network of any size takes milliseconds per layer.
    """
    import copy

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    params = int(sum(p.numel() for p in module.parameters()))
    meta = module if _on_meta(module) else copy.deepcopy(module).to("meta")
    meta.eval()
    recorder = _Recorder([*meta.parameters(), *meta.buffers()])

    class Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            output = func(*args, **kwargs)
            recorder.record(func, args, kwargs, output)
            return output

    image = torch.empty(*input_shape, device="meta")  # made outside the mode: an input, not a constant
    with torch.no_grad(), Mode():
        meta(image)
    counts = {op: tuple(values) for op, values in recorder.counts.items()}
    cost = cost_from_counts(params, counts, recorder.unclassified, recorder.token_elements)
    return replace(cost, macs=cost.macs + recorder.folded_macs)


def _on_meta(module: "nn.Module") -> bool:
    tensors = [*module.parameters(), *module.buffers()]
    return bool(tensors) and all(t.is_meta for t in tensors)
