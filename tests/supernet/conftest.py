"""One supernet per space for the whole session (building one walks every candidate layer)."""

from __future__ import annotations

import shutil
import struct
import zipfile
from pathlib import Path

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


def flip_tensor_bytes(source: Path, target: Path, count: int = 64) -> Path:
    """A copy of the torch checkpoint `source` at `target` with `count` bytes inverted in the middle
    of its largest tensor storage (torch's zip stores storages uncompressed, so no CRC is checked)."""
    shutil.copyfile(source, target)
    with zipfile.ZipFile(target) as archive:
        entry = max((info for info in archive.infolist() if "/data/" in info.filename), key=lambda info: info.file_size)
    with open(target, "r+b") as stream:
        stream.seek(entry.header_offset + 26)  # the local header's name and extra-field lengths
        name_length, extra_length = struct.unpack("<HH", stream.read(4))
        start = entry.header_offset + 30 + name_length + extra_length + entry.file_size // 2
        stream.seek(start)
        damaged = bytes(byte ^ 0xFF for byte in stream.read(count))
        stream.seek(start)
        stream.write(damaged)
    return target


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
