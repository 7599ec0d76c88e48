"""Graph rewrites that give onnxruntime the fused form of a function it cannot fuse by itself.

onnxruntime folds a BatchNormalization that *follows* a convolution into it (its `ConvBNFusion`),
but not one that *precedes* it; EdgeViT's local aggregation normalises and then projects
(BN -> 1x1 conv, twice per block), so its export runs ten separate BatchNormalization kernels.
In inference a BatchNormalization is a per-channel affine map `y = s * x + t`, and a 1x1
convolution without padding is a per-position linear map over channels, so the pair is exactly
one convolution with `W' = W * s` (scaling input channels) and `b' = b + W @ t`. A kernel larger
than 1x1 or any padding breaks the identity at the borders (padded zeros are not shifted by `t`),
so only unpadded pointwise convolutions are folded.

`fold_batch_norms_into_pointwise_convs` is applied to every ONNX model `lut.profiler.export_onnx`
makes, so latency tables and `nas.export` price and deliver the same graph; the export check in
`nas.export` compares the folded graph's outputs with torch's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx


def _attribute(node: "onnx.NodeProto", name: str, default):
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _is_pointwise_unpadded(conv: "onnx.NodeProto", weight: np.ndarray) -> bool:
    return (
        weight.ndim == 4
        and weight.shape[2:] == (1, 1)
        and _attribute(conv, "group", 1) == 1
        and not any(_attribute(conv, "pads", [0, 0, 0, 0]))
        and _attribute(conv, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET", b"VALID", "VALID")
    )


def fold_batch_norms_into_pointwise_convs(model: "onnx.ModelProto") -> int:
    """Fold every inference BatchNormalization whose only consumer is an unpadded 1x1 `Conv`
    (as its data input) into that convolution, in place; returns how many were folded.

    A BatchNormalization is left alone when any of its tensors is not a constant, when its
    output is a graph output or feeds more than one node, or when the consumer is not a plain
    pointwise convolution. New weights get new initializer names, so shared initializers are
    never changed under another node.
    """
    from onnx import numpy_helper

    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    # The TorchScript exporter shares equal initializers (a fresh BN's ones and zeros) and hands
    # each user its own name through an Identity node; follow those to the initializer.
    producers = {output: node for node in graph.node for output in node.output}

    def constant(name: str) -> np.ndarray | None:
        while name not in initializers:
            node = producers.get(name)
            if node is None or node.op_type != "Identity":
                return None
            name = node.input[0]
        return numpy_helper.to_array(initializers[name])

    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {output.name for output in graph.output}
    removed: list[onnx.NodeProto] = []
    for node in list(graph.node):
        if node.op_type != "BatchNormalization" or len(node.output) != 1 or _attribute(node, "training_mode", 0):
            continue
        output = node.output[0]
        users = consumers.get(output, [])
        if output in graph_outputs or len(users) != 1:
            continue
        conv = users[0]
        if conv.op_type != "Conv" or list(conv.input).index(output) != 0 or len(conv.input) < 2:
            continue
        norm_tensors = [constant(name) for name in node.input[1:5]]
        weight = constant(conv.input[1])
        bias = constant(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(0 if weight is None else weight.shape[0])
        if any(tensor is None for tensor in (*norm_tensors, weight, bias)):
            continue
        scale, shift, mean, variance = (tensor.astype(np.float64) for tensor in norm_tensors)
        if not _is_pointwise_unpadded(conv, weight) or weight.shape[1] != scale.shape[0]:
            continue
        bias = bias.astype(np.float64)
        multiplier = scale / np.sqrt(variance + float(_attribute(node, "epsilon", 1e-5)))
        offset = shift - mean * multiplier
        matrix = weight[:, :, 0, 0].astype(np.float64)
        folded_weight = (weight.astype(np.float64) * multiplier[None, :, None, None]).astype(weight.dtype)
        folded_bias = (bias + matrix @ offset).astype(weight.dtype)
        weight_name, bias_name = f"{conv.name or output}.bn_folded_weight", f"{conv.name or output}.bn_folded_bias"
        graph.initializer.extend([numpy_helper.from_array(folded_weight, weight_name),
                                  numpy_helper.from_array(folded_bias, bias_name)])
        inputs = [node.input[0], weight_name, bias_name]
        del conv.input[:]
        conv.input.extend(inputs)
        removed.append(node)
    for node in removed:
        graph.node.remove(node)
    if removed:
        _drop_unused_initializers(graph)
    return len(removed)


def _drop_unused_initializers(graph: "onnx.GraphProto") -> None:
    """Remove the Identity nodes and initializers that only the folded BatchNorms read."""
    outputs = {output.name for output in graph.output}
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        dead = [node for node in graph.node if node.op_type == "Identity" and node.output[0] not in used]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input} | outputs
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
