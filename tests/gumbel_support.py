"""A small supernet with trained-looking MetaPath logits, for the tests of the V1 actions (the
search API's and the search study's)."""

from __future__ import annotations

from pathlib import Path

import torch

from supernet import Supernet


def gumbel_checkpoint(path: Path, unimportant: tuple[int, int]) -> Path:
    """An EdgeNeXt supernet whose MetaPath logits say `unimportant` prefers identity, every other
    slot its blocks (the largest widths' BatchNorms count as trained, the narrower ones do not)."""
    torch.manual_seed(0)
    net = Supernet.from_space("edgenext", num_classes=10, resolution=32)
    with torch.no_grad():
        for key, metapath in net.metapaths():
            metapath.alpha.copy_(torch.full_like(metapath.alpha, 1.0))
            metapath.alpha[-1] = 3.0 if key == unimportant else 0.0
    net.set_arch(net.fit(net.space.largest()))
    net.train()
    with torch.no_grad():
        net(torch.randn(8, 3, 32, 32))  # one training-mode pass: the largest widths' BN statistics move
    net.save(path)
    return path
