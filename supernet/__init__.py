"""supernet: the slimmable shared-weight network of a search space.

Elastic ops (max-size weights, prefix slices), switchable BatchNorm, MetaPaths with Gumbel-softmax
architecture logits, and `Supernet` with `set_arch`, `extract` and checkpoints.
"""

from supernet.elastic import (
    ELASTIC_OPS,
    ElasticConv2d,
    ElasticDepthwiseConv2d,
    ElasticDepthwiseConvTranspose2d,
    ElasticLayerNorm,
    ElasticLinear,
    ElasticOp,
    ElasticOps,
    SwitchableBatchNorm2d,
    prefix_slice,
)
from supernet.supernet import CheckpointError, LayerChoice, MetaPath, Supernet, read_checkpoint

__all__ = [
    "ELASTIC_OPS",
    "CheckpointError",
    "ElasticConv2d",
    "ElasticDepthwiseConv2d",
    "ElasticDepthwiseConvTranspose2d",
    "ElasticLayerNorm",
    "ElasticLinear",
    "ElasticOp",
    "ElasticOps",
    "LayerChoice",
    "MetaPath",
    "Supernet",
    "SwitchableBatchNorm2d",
    "prefix_slice",
    "read_checkpoint",
]
