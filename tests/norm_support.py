"""A supernet whose BatchNorm statistics are trained at the largest widths only, shared by the
tests of `supernet.untrained_norms` and of the evaluator that uses it."""

from __future__ import annotations

import torch

from supernet import Supernet


def largest_widths_trained(space: str = "edgevit", resolution: int = 32, num_classes: int = 10) -> Supernet:
    """A fresh supernet of `space` whose largest network ran one train-mode batch, as after
    Gumbel training: the largest widths' BatchNorms have statistics, no other width has. In eval mode."""
    torch.manual_seed(0)
    net = Supernet.from_space(space, num_classes=num_classes, resolution=resolution)
    net.set_arch(net.fit(net.space.largest()))
    net.train()
    with torch.no_grad():
        net(torch.randn(8, 3, resolution, resolution))
    return net.eval()
