"""Parameter and MAC counts of an architecture, from layer shapes alone (nothing is built or run).

Convention (EfficientFormer toolbox): MACs are convolution and linear multiply-accumulates plus the
attention matrix products; BatchNorm is folded (free), norms, activations, pooling and residual
additions are not counted. Parameters are counted as torch counts them: every parameter of the
classification model, norms, layer scales, attention biases and distillation head included.
"""

from __future__ import annotations

from search_spaces.architecture import Architecture
from search_spaces.layers import LayerCost, total_cost


def cost(arch: Architecture) -> LayerCost:
    """Parameters, MACs and per-op-class work of the whole network."""
    from search_spaces.registry import get_space

    space = get_space(arch.space)
    return total_cost(space.layer_specs(space.validate(arch)))


def count_params(arch: Architecture) -> int:
    return cost(arch).params


def count_macs(arch: Architecture) -> int:
    return cost(arch).macs
