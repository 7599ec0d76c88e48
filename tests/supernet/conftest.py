"""One supernet per space for the whole session (building one walks every candidate layer)."""

from __future__ import annotations

import pytest
import torch

from search_spaces import get_space, list_spaces
from supernet import Supernet

RESOLUTION = 64
NUM_CLASSES = 10


def randomise_norms(net: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and affine weights, so a wrong BN choice shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(torch.rand(size, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(size, generator=generator) * 0.4 - 0.2)


@pytest.fixture(scope="session", params=list_spaces())
def space_supernet(request):
    """(space, supernet) at resolution 64 with 10 classes, randomised norms, eval mode."""
    torch.manual_seed(0)
    space = get_space(request.param)
    net = Supernet.from_space(space, num_classes=NUM_CLASSES, resolution=RESOLUTION)
    randomise_norms(net)
    return space, net.eval()


@pytest.fixture
def small_supernet():
    """A fresh, cheap supernet (EdgeViT) for tests that change weights, modes or logits."""
    torch.manual_seed(0)
    return Supernet.from_space("edgevit", num_classes=NUM_CLASSES, resolution=RESOLUTION)
