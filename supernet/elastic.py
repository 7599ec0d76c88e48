"""Elastic ops: max-size weights, a prefix slice at run time, and a static twin on export.

Every elastic op holds the weights of the largest layer it can become and runs the slice that the
active architecture needs: input channels follow the input tensor, output channels are set by
`configure(twin)` from the static layer the active architecture would build (its "twin"). The
slice used by `forward` and the slice copied by `export_into` come from one helper,
`sliced_tensors`, so the supernet and an extracted network can never disagree about which
weights a sub-network owns.

`SwitchableBatchNorm2d` keeps one BatchNorm per candidate width (slimmable networks): statistics of
one width never move another's.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.ops import Ops


#: a `chunks` entry saying that a dimension is a kernel dimension, sliced around its centre
CENTRED = 0


def prefix_slice(tensor: torch.Tensor, shape: Iterable[int], chunks: tuple[int, ...] | None = None) -> torch.Tensor:
    """The leading `shape` block of `tensor`.

    `chunks[d] = k > 1` says dimension `d` is made of `k` equal parts (fused q, k, v): each part is
    prefix-sliced and the parts are concatenated, so part `i` of the slice is part `i` of the max.
    `chunks[d] = CENTRED` says dimension `d` is a kernel dimension: a smaller kernel is the centre
    of the largest one (once-for-all's elastic kernel), so the slice is taken around the middle.
    """
    shape = tuple(shape)
    if shape == tuple(tensor.shape):
        return tensor
    result = tensor
    for dim, size in enumerate(shape):
        if size == result.shape[dim]:
            continue
        parts = chunks[dim] if chunks is not None and dim < len(chunks) else 1
        if parts == CENTRED:
            result = result.narrow(dim, (result.shape[dim] - size) // 2, size)
        elif parts == 1:
            result = result.narrow(dim, 0, size)
        else:
            full, part = result.shape[dim] // parts, size // parts
            result = torch.cat([result.narrow(dim, i * full, part) for i in range(parts)], dim)
    return result


class ElasticOp(nn.Module):
    """An op with max-size tensors, run and exported as the prefix slice its twin has.

    `configure(twin)` records the twin's tensor shapes (and, for ops whose output size is not
    implied by their input, the output size); `sliced_tensors(input_channels)` gives the slices
    `forward` uses; `export_into(static)` copies them into a static module of the twin's shapes.
    """

    #: per tensor name, which dims are made of equal chunks (see `prefix_slice`)
    tensor_chunks: dict[str, tuple[int, ...]] = {}

    def configure(self, twin: nn.Module) -> None:
        """Take the active size from the static layer `twin` (built for the active architecture)."""

    def active_shapes(self, input_channels: int) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    def sliced_tensors(self, input_channels: int) -> dict[str, torch.Tensor]:
        """The active slice of every tensor. In eval mode without autograd the contiguous slices
        are cached (a search evaluates one sub-network over many batches): the cache key holds
        the shapes and each tensor's storage and version, so any weight change invalidates it."""
        shapes = self.active_shapes(input_channels)
        tensors = {**self._parameters, **self._buffers}
        if self.training or torch.is_grad_enabled():
            return {
                name: prefix_slice(tensors[name], shape, self.tensor_chunks.get(name))
                for name, shape in shapes.items()
                if tensors.get(name) is not None
            }
        key = (
            tuple(shapes.items()),
            tuple((t.data_ptr(), t._version) for t in tensors.values() if t is not None),
        )
        cached = self.__dict__.get("_slice_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        sliced = {
            name: prefix_slice(tensors[name], shape, self.tensor_chunks.get(name)).contiguous()
            for name, shape in shapes.items()
            if tensors.get(name) is not None
        }
        self.__dict__["_slice_cache"] = (key, sliced)
        return sliced

    def train(self, mode: bool = True) -> "ElasticOp":
        self.__dict__.pop("_slice_cache", None)
        return super().train(mode)

    def export_into(self, static: nn.Module) -> None:
        """Copy the active slice into `static` (a plain torch layer of the twin's shapes)."""
        input_channels = _input_channels(static)
        with torch.no_grad():
            for name, value in self.sliced_tensors(input_channels).items():
                target = getattr(static, name)
                if tuple(target.shape) != tuple(value.shape):
                    raise ValueError(f"{type(self).__name__}.{name}: slice {tuple(value.shape)} != static {tuple(target.shape)}")
                target.copy_(value)


def _input_channels(static: nn.Module) -> int:
    for attribute in ("in_channels", "in_features"):
        if hasattr(static, attribute):
            return getattr(static, attribute)
    if isinstance(static, nn.LayerNorm):
        return static.normalized_shape[0]
    raise TypeError(f"cannot tell the input width of {type(static).__name__}")


class ElasticConv2d(ElasticOp):
    """Dense convolution: weight[:out, :in] with `in` from the input and `out` from the twin."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int, bias: bool):
        super().__init__()
        self.stride, self.padding = stride, padding
        template = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        self.weight = template.weight
        self.bias = template.bias
        self.out_channels = out_channels

    def configure(self, twin: nn.Module) -> None:
        self.out_channels = twin.out_channels

    def active_shapes(self, input_channels: int) -> dict[str, tuple[int, ...]]:
        kernel = self.weight.shape[2:]
        return {"weight": (self.out_channels, input_channels, *kernel), "bias": (self.out_channels,)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tensors = self.sliced_tensors(x.shape[1])
        return F.conv2d(x, tensors["weight"], tensors.get("bias"), self.stride, self.padding)


class ElasticDepthwiseConv2d(ElasticOp):
    """Depthwise convolution: groups and channels follow the input; kernel, stride and padding
    follow the twin, a smaller kernel being the centre of the largest (where a space makes the
    kernel a per-slot choice: the `hybrid` space's conv encoders and LGL propagations)."""

    transposed = False
    tensor_chunks = {"weight": (1, 1, CENTRED, CENTRED)}

    def __init__(self, channels: int, kernel_size: int, stride: int, padding: int, bias: bool):
        super().__init__()
        self.stride, self.padding = stride, padding
        make = nn.ConvTranspose2d if self.transposed else nn.Conv2d
        template = make(channels, channels, kernel_size, stride, padding, groups=channels, bias=bias)
        self.weight = template.weight
        self.bias = template.bias
        self.kernel_size = tuple(self.weight.shape[2:])

    def configure(self, twin: nn.Module) -> None:
        self.kernel_size, self.stride, self.padding = tuple(twin.kernel_size), twin.stride, twin.padding

    def active_shapes(self, input_channels: int) -> dict[str, tuple[int, ...]]:
        return {"weight": (input_channels, self.weight.shape[1], *self.kernel_size), "bias": (input_channels,)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tensors = self.sliced_tensors(x.shape[1])
        return F.conv2d(x, tensors["weight"], tensors.get("bias"), self.stride, self.padding, groups=x.shape[1])


class ElasticDepthwiseConvTranspose2d(ElasticDepthwiseConv2d):
    """Depthwise transposed convolution (EdgeViT's local propagation), channels follow the input."""

    transposed = True

    def __init__(self, channels: int, kernel_size: int, stride: int, bias: bool):
        super().__init__(channels, kernel_size, stride, 0, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tensors = self.sliced_tensors(x.shape[1])
        return F.conv_transpose2d(x, tensors["weight"], tensors.get("bias"), self.stride, groups=x.shape[1])


class ElasticLinear(ElasticOp):
    """Linear layer on the last dimension: weight[:out, :in]; fused q/k/v outputs slice per chunk."""

    def __init__(self, in_features: int, out_features: int, bias: bool, output_chunks: int = 1):
        super().__init__()
        template = nn.Linear(in_features, out_features, bias=bias)
        self.weight = template.weight
        self.bias = template.bias
        self.out_features = out_features
        self.tensor_chunks = {"weight": (output_chunks, 1), "bias": (output_chunks,)}

    def configure(self, twin: nn.Module) -> None:
        self.out_features = twin.out_features

    def active_shapes(self, input_channels: int) -> dict[str, tuple[int, ...]]:
        return {"weight": (self.out_features, input_channels), "bias": (self.out_features,)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tensors = self.sliced_tensors(x.shape[-1])
        return F.linear(x, tensors["weight"], tensors.get("bias"))


class ElasticChannelLinear(ElasticLinear):
    """Linear layer over the channels of an NCHW map (a 1x1 conv), weight[:out, :in] like `ElasticLinear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tensors = self.sliced_tensors(x.shape[1])
        return F.conv2d(x, tensors["weight"][:, :, None, None], tensors.get("bias"))


class ElasticLayerNorm(ElasticOp):
    """LayerNorm over the last dimension, normalising the active channels only."""

    def __init__(self, num_features: int, eps: float):
        super().__init__()
        template = nn.LayerNorm(num_features, eps=eps)
        self.weight, self.bias, self.eps = template.weight, template.bias, eps

    def active_shapes(self, input_channels: int) -> dict[str, tuple[int, ...]]:
        return {"weight": (input_channels,), "bias": (input_channels,)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[-1]
        tensors = self.sliced_tensors(channels)
        return F.layer_norm(x, (channels,), tensors["weight"], tensors["bias"], self.eps)


class SwitchableBatchNorm2d(nn.Module):
    """One `BatchNorm2d` per candidate width, chosen by the input's channel count.

    Candidates are set once, when the supernet knows every width this BN can see
    (`set_candidates`); an input of any other width is a `ValueError` naming it and the allowed ones.
    """

    def __init__(self, max_features: int) -> None:
        super().__init__()
        self.max_features = max_features
        self.norms = nn.ModuleDict()

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(sorted(int(key) for key in self.norms))

    def set_candidates(self, widths: Iterable[int]) -> None:
        widths = sorted(set(widths))
        if not widths or widths[-1] > self.max_features:
            raise ValueError(f"BatchNorm candidates {widths} must be non-empty and at most {self.max_features}")
        self.norms = nn.ModuleDict({str(width): nn.BatchNorm2d(width) for width in widths})

    def norm_for(self, width: int) -> nn.BatchNorm2d:
        try:
            return self.norms[str(width)]
        except KeyError:
            raise ValueError(f"SwitchableBatchNorm2d has no BatchNorm for width {width}; widths: {list(self.widths)}") from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_for(x.shape[1])(x)

    def export_into(self, static: nn.BatchNorm2d) -> None:
        static.load_state_dict(self.norm_for(static.num_features).state_dict())


class ElasticOps(Ops):
    """The supernet's op factory: every parametrised layer is an elastic op of the given max size."""

    def conv2d(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True) -> nn.Module:
        return ElasticConv2d(in_channels, out_channels, kernel_size, stride, padding, bias)

    def depthwise_conv2d(self, channels, kernel_size, stride=1, padding=0, bias=True) -> nn.Module:
        return ElasticDepthwiseConv2d(channels, kernel_size, stride, padding, bias)

    def depthwise_conv_transpose2d(self, channels, kernel_size, stride, bias=True) -> nn.Module:
        return ElasticDepthwiseConvTranspose2d(channels, kernel_size, stride, bias)

    def linear(self, in_features, out_features, bias=True, output_chunks=1) -> nn.Module:
        return ElasticLinear(in_features, out_features, bias, output_chunks)

    def channel_linear(self, in_features, out_features, bias=True) -> nn.Module:
        return ElasticChannelLinear(in_features, out_features, bias)

    def batch_norm2d(self, num_features) -> nn.Module:
        return SwitchableBatchNorm2d(num_features)

    def layer_norm(self, num_features, eps=1e-5) -> nn.Module:
        return ElasticLayerNorm(num_features, eps)

    # channel_layer_norm and layer_scale: the static modules already slice to the input's width.


ELASTIC_OPS = ElasticOps()
