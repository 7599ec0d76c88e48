"""The op factory that blocks are composed of.

Every block class is written once and asks an `Ops` object for each of its parametrised layers
(convolutions, norms, linears, layer scales). `search_spaces` passes `STATIC_OPS`, which returns
plain torch modules of exactly the requested size; the supernet passes an elastic factory whose
modules hold max-size weights and run a prefix slice, and extraction swaps each one for its static
twin. Layers without width-dependent weights (activations, pooling, attention-bias tables over a
fixed head count) are plain torch inside the block.

Rules for block code so that the same class works with elastic ops:
- take the channel count of a tensor from the tensor (`x.shape[1]`), never from a number stored
  at construction; store only structural hyper-parameters (heads, key dim, kernel size, stride);
- create every width-dependent weight through the factory, in the order the forward uses it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerScale(nn.Module):
    """Per-channel learnable scale γ (CaiT / EfficientFormer layer scale).

    `channel_dim` is the tensor dimension that holds channels (1 for NCHW, -1 for tokens).
    """

    def __init__(self, num_features: int, init_value: float, channel_dim: int = 1) -> None:
        super().__init__()
        self.channel_dim = channel_dim
        self.weight = nn.Parameter(torch.full((num_features,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * _broadcast(self.weight[: x.shape[self.channel_dim]], x.dim(), self.channel_dim)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel dimension of an NCHW tensor ("channels_first" LayerNorm).

    Written as permute -> `F.layer_norm` over the last dimension -> permute back, not by hand
    (`x.mean(1)`, `(x - mean).pow(2).mean(1)`, as the official EdgeNeXt code does): the same
    function, but the permuted form exports to one fused `LayerNormalization` (ONNX opset 17) or
    `layer_norm` (Core ML) between two transposes that runtimes cancel or fuse, where the hand
    form becomes seven separate reductions and element-wise ops (8% of EdgeNeXt-XXS's onnxruntime
    latency; `benchmarks/export_speed.py`).
    """

    def __init__(self, num_features: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        x = F.layer_norm(x.permute(0, 2, 3, 1), (channels,), self.weight[:channels], self.bias[:channels], self.eps)
        return x.permute(0, 3, 1, 2)


class ChannelLinear(nn.Linear):
    """A linear layer over the channel dimension of an NCHW map, run as a 1x1 convolution.

    Holds a linear layer's `(out, in)` weight (so it is interchangeable with `nn.Linear` in a
    state dict) but applies it to dimension 1 of an NCHW tensor. A channels-last MLP
    (permute -> linear -> GELU -> linear -> permute back) written this way stays in the layout the
    surrounding convolutions use: runtimes run it as `Conv` in their blocked convolution layout
    instead of transposing twice around a `Gemm`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)


def _broadcast(vector: torch.Tensor, ndim: int, channel_dim: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[channel_dim] = vector.shape[0]
    return vector.reshape(shape)


class Ops:
    """Factory of the parametrised layers blocks are made of; the default makes plain torch layers.

    Subclasses (the supernet's elastic factory) override the methods; every method receives the
    size the layer has in the network being built (the maximum size, for a supernet).
    """

    def conv2d(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
    ) -> nn.Module:
        """Dense convolution (groups = 1)."""
        return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)

    def depthwise_conv2d(
        self, channels: int, kernel_size: int, stride: int = 1, padding: int = 0, bias: bool = True
    ) -> nn.Module:
        """Depthwise convolution: groups = channels, so it follows the active channel count."""
        return nn.Conv2d(channels, channels, kernel_size, stride, padding, groups=channels, bias=bias)

    def depthwise_conv_transpose2d(
        self, channels: int, kernel_size: int, stride: int, bias: bool = True
    ) -> nn.Module:
        """Depthwise transposed convolution (EdgeViT's local propagation)."""
        return nn.ConvTranspose2d(channels, channels, kernel_size, stride, groups=channels, bias=bias)

    def linear(self, in_features: int, out_features: int, bias: bool = True, output_chunks: int = 1) -> nn.Module:
        """Linear layer; `output_chunks` > 1 says the output is that many equal parts (fused q, k, v),
        so an elastic twin slices each part rather than the prefix of the whole."""
        return nn.Linear(in_features, out_features, bias=bias)

    def channel_linear(self, in_features: int, out_features: int, bias: bool = True) -> nn.Module:
        """Linear layer over dimension 1 of an NCHW map (a 1x1 conv with an `(out, in)` weight)."""
        return ChannelLinear(in_features, out_features, bias=bias)

    def batch_norm2d(self, num_features: int) -> nn.Module:
        """BatchNorm over NCHW channels (the supernet switches one BN per candidate width)."""
        return nn.BatchNorm2d(num_features)

    def layer_norm(self, num_features: int, eps: float = 1e-5) -> nn.Module:
        """LayerNorm over the last dimension (tokens or channels-last tensors)."""
        return nn.LayerNorm(num_features, eps=eps)

    def channel_layer_norm(self, num_features: int, eps: float = 1e-6) -> nn.Module:
        """LayerNorm over dimension 1 of an NCHW tensor."""
        return ChannelLayerNorm(num_features, eps)

    def layer_scale(self, num_features: int, init_value: float, channel_dim: int = 1) -> nn.Module:
        return LayerScale(num_features, init_value, channel_dim)


STATIC_OPS = Ops()
