"""The op classes of an ONNX graph: what an analytic device model needs to price a network of any origin.

`onnx_costs(model_bytes, input_shape=None)` reads an ONNX model (shapes from
`onnx.shape_inference`, a dynamic input given by `input_shape`), propagates constants (initializers,
`Constant` nodes, and everything computed from them and from the now static shapes: `Shape`,
`Gather` of shapes, EdgeNeXt's Fourier features...) so that what a runtime folds costs nothing,
and sorts every remaining node into the op classes of `search_spaces.tracing.OP_CLASSES` (and its
channels-last work into `token_elements`), the same as a trace of the torch module gives:

- `Conv` / `ConvTranspose`: `dwconv` with one channel per group, else `conv`; MACs from the weight
  and the output (input, for transposed) shapes;
- `MatMul` / `Gemm`: `linear` when an operand is constant, else `matmul`; a constant bias `Add`
  right after a constant-weight `MatMul` belongs to that linear layer (torch exports a 3-D linear so);
- `BatchNormalization`, `LayerNormalization`; a reduction (`ReduceMean`, `ReduceL2`, ...) keeping its
  dimensions is LayerNorm-like (`layernorm`), one dropping them is pooling (`elementwise`), as the trace decides;
- activations (`Relu`, `Clip` to [0, 6], `Sigmoid`, `Softmax`, `HardSwish`, ...); the exported
  form of exact GELU (`Div`, `Erf`, `Add`, `Mul`, `Mul`) counts as one GELU, and LayerNorm written
  out (`ReduceMean`, `Sub`, `Pow`, `ReduceMean`, `Add`, `Sqrt`, `Div`) as one LayerNorm;
- element-wise arithmetic and pooling; `Transpose`, `Concat`, `Resize`, `Pad` and gathers of
  activations are `layout`; reshapes, slices, splits, squeezes, casts, identities and a `Gather`
  of one constant index (a select, `qkv[0]`) are free.

Anything else is unpriceable: `OnnxCostError` lists the op types rather than pricing them at zero.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from search_spaces.tracing import LayerCost, cost_from_counts, is_channels_last

_FREE = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast", "Slice", "Split", "Expand", "Dropout",
         "Shape", "Constant", "ConstantOfShape", "Size", "CastLike"}
_ACTIVATIONS = {"Relu", "Sigmoid", "Tanh", "Erf", "Gelu", "Softmax", "LogSoftmax", "HardSigmoid", "HardSwish", "LeakyRelu",
                "Elu", "Selu", "Softplus", "PRelu", "Mish"}
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Neg", "Abs", "Exp", "Log", "Sin", "Cos", "Where",
                "Max", "Min", "Sum", "Mean", "Equal", "Less", "Greater", "Not", "And", "Or", "Floor", "Ceil", "Round",
                "AveragePool", "MaxPool", "GlobalAveragePool", "GlobalMaxPool", "Clip", "Range", "Sign"}
_LAYOUT = {"Transpose", "Concat", "Resize", "Upsample", "Pad", "Gather", "GatherElements", "Tile", "DepthToSpace",
           "SpaceToDepth"}
_REDUCTIONS = {"ReduceMean", "ReduceSum", "ReduceL2", "ReduceSumSquare", "ReduceMax", "ReduceL1", "ReduceLogSumExp"}
_NORMS = {"BatchNormalization": "batchnorm", "LayerNormalization": "layernorm", "InstanceNormalization": "layernorm",
          "GroupNormalization": "layernorm", "LpNormalization": "layernorm"}


class OnnxCostError(ValueError):
    """An ONNX model that cannot be priced; the message is one line naming the problem."""


def _attribute(node, name: str, default: Any = None) -> Any:
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _load(model_bytes: bytes, input_shape: Sequence[int] | None):
    import onnx

    try:
        model = onnx.load_from_string(model_bytes)
    except Exception as error:  # noqa: BLE001  (protobuf raises many types for truncated or foreign bytes)
        raise OnnxCostError(f"not a readable ONNX model ({type(error).__name__})") from None
    graph = model.graph
    initializers = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    if len(inputs) != 1:
        raise OnnxCostError(f"the model has {len(inputs)} inputs; one image input is priced")
    dims = inputs[0].type.tensor_type.shape.dim
    declared = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
    if input_shape is not None:
        if len(input_shape) != len(declared) or any(d is not None and d != s for d, s in zip(declared, input_shape)):
            raise OnnxCostError(f"--input-shape {list(input_shape)} does not fit the model's input {declared}")
        for dim, size in zip(dims, input_shape):
            dim.Clear()
            dim.dim_value = int(size)
    elif any(d is None for d in declared):
        raise OnnxCostError(f"the input {inputs[0].name!r} has dynamic dimensions {declared}; give --input-shape")
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as error:  # noqa: BLE001
        raise OnnxCostError(f"shape inference failed ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None
    return model


class _Graph:
    """Shapes, constants and consumers of a shape-inferred graph."""

    def __init__(self, model) -> None:
        from onnx import numpy_helper

        graph = model.graph
        self.nodes = list(graph.node)
        self.shapes: dict[str, tuple[int, ...] | None] = {}
        for value in [*graph.input, *graph.value_info, *graph.output]:
            dims = value.type.tensor_type.shape.dim
            self.shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims) \
                if value.type.tensor_type.HasField("shape") else None
        self.values: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.folded: set[str] = set()  # values made by Constant nodes (not weights)
        for name, array in self.values.items():
            self.shapes[name] = tuple(array.shape)
        self.constant = set(self.values)
        self.consumers: dict[str, list] = defaultdict(list)
        for node in self.nodes:
            for name in node.input:
                self.consumers[name].append(node)
        for node in self.nodes:  # topological order: ONNX requires it
            if node.op_type in ("Constant", "ConstantOfShape", "Shape", "Size") or (
                    node.input and all(not name or name in self.constant for name in node.input)):
                self.constant.update(node.output)
                if node.op_type == "Constant":
                    value = _attribute(node, "value")
                    if value is not None:
                        self.values[node.output[0]] = numpy_helper.to_array(value)
                        self.folded.add(node.output[0])

    def numel(self, name: str) -> int:
        shape = self.shapes.get(name)
        if not shape or any(d < 0 for d in shape):
            raise OnnxCostError(f"no static shape for tensor {name!r}; give --input-shape")
        return int(np.prod(shape, dtype=np.int64))

    def shape(self, name: str) -> tuple[int, ...]:
        shape = self.shapes.get(name)
        if not shape or any(d < 0 for d in shape):
            raise OnnxCostError(f"no static shape for tensor {name!r}; give --input-shape")
        return shape

    def scalar(self, name: str) -> float | None:
        value = self.values.get(name)
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None

    def only_consumer(self, name: str):
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 else None


def _gelu_nodes(graph: _Graph) -> dict[int, str]:
    """The nodes of each exported exact GELU, x * 0.5 * (1 + erf(x / sqrt 2)), by id: the Erf
    counts as the activation, its Div / Add / Mul / Mul as part of it."""
    roles: dict[int, str] = {}
    for node in graph.nodes:
        if node.op_type != "Erf":
            continue
        scale = next((n for n in graph.nodes if node.input[0] in n.output), None)
        add = graph.only_consumer(node.output[0])
        if scale is None or scale.op_type not in ("Div", "Mul") or add is None or add.op_type != "Add":
            continue
        first = graph.only_consumer(add.output[0])
        if first is None or first.op_type != "Mul":
            continue
        chain = [scale, add, first]
        second = graph.only_consumer(first.output[0])
        if second is not None and second.op_type == "Mul" and any(graph.scalar(i) == 0.5 for i in second.input):
            chain.append(second)
        roles[id(node)] = "activation"
        roles.update({id(part): "fused" for part in chain})
    return roles


def _layer_norm_nodes(graph: _Graph) -> dict[int, str]:
    """LayerNorm written out (mean, centre, square, mean, add eps, sqrt, divide): the first
    ReduceMean counts as one layernorm, the rest as part of it."""
    roles: dict[int, str] = {}
    for node in graph.nodes:
        if node.op_type != "ReduceMean" or id(node) in roles:
            continue
        sub = next((n for n in graph.consumers.get(node.output[0], []) if n.op_type == "Sub"), None)
        if sub is None:
            continue
        square = next((n for n in graph.consumers.get(sub.output[0], []) if n.op_type in ("Pow", "Mul")), None)
        variance = graph.only_consumer(square.output[0]) if square is not None else None
        if variance is None or variance.op_type != "ReduceMean":
            continue
        add = graph.only_consumer(variance.output[0])
        root = graph.only_consumer(add.output[0]) if add is not None and add.op_type == "Add" else None
        divide = graph.only_consumer(root.output[0]) if root is not None and root.op_type == "Sqrt" else None
        if divide is None or divide.op_type != "Div":
            continue
        roles[id(node)] = "layernorm"
        roles.update({id(part): "fused" for part in (sub, square, variance, add, root, divide)})
    return roles


def onnx_costs(model_bytes: bytes, input_shape: Sequence[int] | None = None) -> LayerCost:
    """Params, MACs and per-class op counts of an ONNX model (see the module docstring)."""
    graph = _Graph(_load(model_bytes, input_shape))
    roles = {**_gelu_nodes(graph), **_layer_norm_nodes(graph)}
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    unknown: set[str] = set()
    linear_outputs: set[str] = set()
    token_elements = 0

    def add(op: str, output: str, macs: int = 0) -> None:
        nonlocal token_elements
        entry = counts[op]
        entry[0] += 1
        entry[1] += int(macs)
        entry[2] += graph.numel(output)
        if is_channels_last(op, len(graph.shape(output))):
            token_elements += graph.numel(output)

    for node in graph.nodes:
        kind, role = node.op_type, roles.get(id(node))
        if role == "fused" or all(name in graph.constant for name in node.output):
            continue
        if role is not None:
            add(role, node.output[0])
        elif kind in ("Conv", "ConvTranspose"):
            weight = graph.shape(node.input[1])
            group = int(_attribute(node, "group", 1))
            per_group, kernel = int(weight[1]), int(np.prod(weight[2:], dtype=np.int64))
            source = node.input[0] if kind == "ConvTranspose" else node.output[0]
            add("dwconv" if per_group == 1 and group > 1 else "conv", node.output[0], graph.numel(source) * per_group * kernel)
        elif kind in ("MatMul", "Gemm"):
            a, b = graph.shape(node.input[0]), graph.shape(node.input[1])
            k = a[-2] if kind == "Gemm" and _attribute(node, "transA", 0) else a[-1]
            n = b[-2] if kind == "Gemm" and _attribute(node, "transB", 0) else b[-1]
            rows = graph.numel(node.output[0]) // max(n, 1)
            constant = node.input[0] in graph.constant or node.input[1] in graph.constant
            add("linear" if constant else "matmul", node.output[0], rows * k * n)
            if constant:
                linear_outputs.add(node.output[0])
        elif kind == "Add" and any(name in linear_outputs for name in node.input) and any(
                name in graph.constant for name in node.input):
            continue  # the bias of the linear layer before it
        elif kind in _NORMS:
            add(_NORMS[kind], node.output[0])
        elif kind in _REDUCTIONS:
            add("layernorm" if _attribute(node, "keepdims", 1) else "elementwise", node.output[0])
        elif kind == "Clip" and [graph.scalar(name) for name in node.input[1:3]] == [0.0, 6.0]:
            add("activation", node.output[0])  # ReLU6
        elif kind in _ACTIVATIONS:
            add("activation", node.output[0])
        elif kind in _ELEMENTWISE:
            add("elementwise", node.output[0])
        elif kind == "Gather" and graph.values.get(node.input[1]) is not None and graph.values[node.input[1]].ndim == 0:
            continue  # one index along an axis (qkv[0]): a view, as torch's select is
        elif kind in _LAYOUT:
            add("layout", node.output[0])
        elif kind not in _FREE:
            unknown.add(kind)
    if unknown:
        raise OnnxCostError(f"cannot price op type(s) {', '.join(sorted(unknown))}: no op class for them")
    # the float initializers (BatchNorms an exporter folded into convolutions are not among them)
    params = sum(int(value.size) for name, value in graph.values.items()
                 if value.dtype.kind == "f" and value.ndim >= 1 and name not in graph.folded)
    return cost_from_counts(params, {op: tuple(values) for op, values in counts.items()}, (), token_elements)
