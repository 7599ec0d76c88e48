"""The supernet of the cross-family space `hybrid` (issue 20): one place holds a block of every
family, a conv encoder built with the largest kernel runs every smaller one (its centre), an LGL
block built with a sample ratio runs every smaller one (r = 1: no local aggregation), and the
contract `supernet == extract` holds across all of them, in fixed, Gumbel and sandwich training.

The generic contracts (`tests/supernet/test_supernet.py`) cover `hybrid` through `space_supernet`,
which is parametrised over `list_spaces()`; these tests pin the knobs that only this space has."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from search_spaces import build_model
from supernet import Supernet
from supernet.elastic import ElasticDepthwiseConv2d, ElasticDepthwiseConvTranspose2d
from tests.search_spaces.test_hybrid import _mixed

from .conftest import NUM_CLASSES, RESOLUTION, randomise_norms


@pytest.fixture(scope="module")
def hybrid_net():
    torch.manual_seed(0)
    net = Supernet.from_space("hybrid", num_classes=NUM_CLASSES, resolution=RESOLUTION)
    randomise_norms(net)
    return net.eval()


def _relative_error(output, expected):
    return float((output - expected).abs().max() / expected.abs().max().clamp_min(1e-6))


def test_a_smaller_kernel_is_the_centre_of_the_largest():
    torch.manual_seed(0)
    elastic = ElasticDepthwiseConv2d(6, 9, stride=1, padding=4, bias=True)
    static = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    elastic.configure(static)
    x = torch.randn(2, 4, 8, 8)
    centre = elastic.weight[:4, :, 3:6, 3:6]
    expected = F.conv2d(x, centre, elastic.bias[:4], padding=1, groups=4)
    assert torch.allclose(elastic(x), expected)
    elastic.export_into(static)
    assert torch.equal(static.weight, centre) and torch.allclose(static(x), expected)


def test_a_smaller_propagation_kernel_is_the_centre_of_the_largest():
    elastic = ElasticDepthwiseConvTranspose2d(4, 4, stride=4, bias=True)
    static = nn.ConvTranspose2d(4, 4, 2, 2, groups=4)
    elastic.configure(static)
    x = torch.randn(1, 4, 3, 3)
    out = elastic(x)
    assert out.shape == (1, 4, 6, 6)
    assert torch.allclose(out, F.conv_transpose2d(x, elastic.weight[:, :, 1:3, 1:3], elastic.bias, 2, groups=4))


def test_every_family_and_knob_runs_as_the_extracted_network(hybrid_net):
    net = hybrid_net
    slot = net.place("stages.2.blocks.0")
    assert set(slot.paths) == {"ffn", "attn_ffn", "meta4d", "conv_encoder", "sdta", "lgl", "identity"}
    assert slot.module_for("conv_encoder").dwconv.weight.shape[2:] == (9, 9)  # built at the largest kernel
    arch = net.fit(_mixed())
    images = torch.randn(2, 3, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(1))
    net.set_arch(arch)
    with torch.no_grad():
        shared = net(images)
        extracted = net.extract(arch).eval()
        static = extracted(images)
    assert _relative_error(shared, static) <= 1e-5
    rebuilt = build_model(arch)
    rebuilt.load_state_dict(extracted.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(images), static)


@pytest.mark.parametrize("mode", ["gumbel", "gumbel_hard"])
def test_gumbel_modes_mix_the_families_and_train_alpha(hybrid_net, mode):
    net = hybrid_net
    net.set_arch(net.fit(_mixed()))
    net.train()
    net.set_mode(mode, tau=1.0)
    try:
        net.zero_grad(set_to_none=True)
        torch.manual_seed(3)
        logits = net(torch.randn(4, 3, RESOLUTION, RESOLUTION))
        assert torch.isfinite(logits).all()
        F.cross_entropy(logits, torch.arange(4) % NUM_CLASSES).backward()
        alphas = [p for p in net.arch_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
        assert len(alphas) >= len(net.arch_parameters()) // 2
    finally:
        net.set_mode("fixed")
        net.zero_grad(set_to_none=True)
        net.eval()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sandwich", "gumbel"])
def test_training_runs_and_the_checkpoint_keeps_the_contract(tmp_path, mode):
    from supernet.data import load_data
    from supernet.training import TrainConfig, Trainer

    config = TrainConfig(space="hybrid", data="synthetic:64", mode=mode, epochs=1, batch_size=16, resolution=32,
                         val_random=1, warmup_epochs=0.5)
    checkpoint = tmp_path / "hybrid.pt"
    Trainer(config, load_data("synthetic:64", 32, seed=0), checkpoint, progress=False).run()
    net = Supernet.load(checkpoint, space="hybrid").eval()
    arch = net.fit(_mixed())
    net.set_arch(arch)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _relative_error(net(images), net.extract(arch).eval()(images)) <= 1e-5
    if mode == "gumbel":
        assert net.has_trained_alpha()
