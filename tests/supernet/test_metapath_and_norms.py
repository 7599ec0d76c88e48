"""Gumbel-softmax MetaPaths, V1 importance scores, switchable BatchNorm and elastic-op slicing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from supernet.importance import MetaPathImportance
from supernet import ElasticLinear, MetaPath, Supernet, SwitchableBatchNorm2d, prefix_slice

from .conftest import NUM_CLASSES, RESOLUTION


@pytest.fixture(scope="module")
def v1_net():
    torch.manual_seed(0)
    return Supernet.from_space("efficientformer_v1", num_classes=NUM_CLASSES, resolution=RESOLUTION)


@pytest.fixture(scope="module")
def edgenext_net():
    torch.manual_seed(0)
    return Supernet.from_space("edgenext", num_classes=NUM_CLASSES, resolution=RESOLUTION)


@pytest.mark.parametrize("mode", ["gumbel", "gumbel_hard"])
def test_gumbel_modes_send_gradients_to_alpha_and_weights(edgenext_net, mode):
    """EdgeNeXt slots of stages 2-4 hold conv_encoder, sdta and identity: three paths, cheap to run."""
    net = edgenext_net.train()
    net.set_arch(net.fit(net.space.largest()))
    net.set_mode(mode, tau=1.0)
    net.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    loss = nn.functional.cross_entropy(net(torch.randn(4, 3, RESOLUTION, RESOLUTION)), torch.arange(4) % NUM_CLASSES)
    loss.backward()
    alphas_with_grad = [p for p in net.arch_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert len(alphas_with_grad) >= len(net.arch_parameters()) // 2
    weights_with_grad = [p for p in net.weight_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert weights_with_grad
    net.set_mode("fixed")


def test_soft_gumbel_approaches_the_favoured_path_as_tau_shrinks(v1_net):
    """Stage 4 mixes meta4d, meta3d and identity; with α strongly on meta3d and τ small the mixture is meta3d."""
    net = v1_net.eval()
    arch = net.fit(net.space.largest())  # stage 4: all meta3d, so `fixed` runs the meta3d paths
    net.set_arch(arch)
    torch.manual_seed(4)
    images = torch.randn(2, 3, RESOLUTION, RESOLUTION)
    original = [p.detach().clone() for p in net.arch_parameters()]
    with torch.no_grad():
        for (stage, _), path in net.metapaths():
            path.alpha.zero_()
            favourite = path.paths.index("meta3d") if stage == 3 else 0  # meta4d elsewhere
            path.alpha[favourite] = 30.0
        net.set_mode("gumbel", tau=0.05)
        mixed = net(images)
        net.set_mode("fixed")
        target = net(images)
        for alpha, saved in zip(net.arch_parameters(), original):
            alpha.copy_(saved)
    assert torch.allclose(mixed, target, rtol=1e-3, atol=1e-4)


def test_gumbel_hard_runs_one_path_with_straight_through_weight():
    path = MetaPath({}, ())  # identity only: the simplest path set
    path.mode, path.tau = "gumbel_hard", 0.5
    x = torch.randn(2, 3, 4, 4)
    out = path(x)
    assert torch.equal(out, x)
    out.sum().backward()
    assert path.alpha.grad is not None


def test_importance_follows_v1_formula_normalised_by_its_uniform_value():
    path = MetaPath({}, ("meta4d", "meta3d"))
    with torch.no_grad():
        path.alpha.copy_(torch.log(torch.tensor([0.5, 0.3, 0.2])))
    assert path.importance() == pytest.approx((0.5 + 0.3) / 0.2 / 2)  # (α3D + α4D) / αI over its uniform value 2
    with torch.no_grad():
        path.alpha.zero_()
    assert path.importance() == pytest.approx(1.0)
    two_paths = MetaPath({}, ("meta4d",))
    assert two_paths.importance() == pytest.approx(1.0)  # path counts no longer decide


def test_supernet_importance_per_slot_and_stage(small_supernet):
    report = small_supernet.importance()
    assert len(report.stages) == 4 and not report.trained
    assert all(value == pytest.approx(1.0) for value in report.slots.values())  # α = 0: uniform
    assert report.stages == pytest.approx((1.0,) * 4)  # a mean: the deepest stage is not favoured
    with torch.no_grad():
        dict(small_supernet.metapaths())[(2, 0)].alpha.copy_(torch.tensor([0.0, 2.0]))  # prefer identity
    report = small_supernet.importance()
    assert report.trained and report.slots[(2, 0)] < 1.0
    assert report.least_important_stage(range(4)) == 2
    assert MetaPathImportance.from_dict(report.to_dict()) == report


def test_switchable_bn_keeps_statistics_per_width():
    norm = SwitchableBatchNorm2d(16)
    norm.set_candidates([8, 12, 16])
    norm.train()
    before = norm.norm_for(16).running_mean.clone()
    norm(torch.randn(8, 8, 4, 4) + 3.0)
    assert not torch.equal(norm.norm_for(8).running_mean, torch.zeros(8))
    assert torch.equal(norm.norm_for(16).running_mean, before)
    assert torch.equal(norm.norm_for(12).running_mean, torch.zeros(12))


def test_switchable_bn_refuses_an_unknown_width():
    norm = SwitchableBatchNorm2d(16)
    norm.set_candidates([8, 16])
    with pytest.raises(ValueError, match=r"width 10; widths: \[8, 16\]"):
        norm(torch.randn(1, 10, 2, 2))


def test_supernet_trains_one_width_without_moving_another(small_supernet):
    net = small_supernet.train()
    space = net.space
    wide, narrow = net.fit(space.largest()), net.fit(space.smallest())
    head_norm = next(m for m in net.head.modules() if isinstance(m, SwitchableBatchNorm2d))
    narrow_width, wide_width = narrow.stages[-1].width, wide.stages[-1].width
    before = head_norm.norm_for(narrow_width).running_mean.clone()
    net.set_arch(wide)
    net(torch.randn(4, 3, RESOLUTION, RESOLUTION))
    assert not torch.equal(head_norm.norm_for(wide_width).running_mean, torch.zeros(wide_width))
    assert torch.equal(head_norm.norm_for(narrow_width).running_mean, before)


def test_prefix_slice_per_chunk():
    fused = torch.arange(12).reshape(12, 1)  # q rows 0-3, k rows 4-7, v rows 8-11
    sliced = prefix_slice(fused, (6, 1), chunks=(3, 1))
    assert sliced.flatten().tolist() == [0, 1, 4, 5, 8, 9]
    assert prefix_slice(fused, (6, 1)).flatten().tolist() == [0, 1, 2, 3, 4, 5]


def test_elastic_linear_runs_and_exports_the_same_slice():
    torch.manual_seed(0)
    elastic = ElasticLinear(8, 24, bias=True, output_chunks=3)
    static = nn.Linear(4, 12)
    elastic.configure(static)
    elastic.export_into(static)
    x = torch.randn(5, 4)
    assert torch.equal(elastic(x), static(x))
    assert torch.equal(static.weight[4:8], elastic.weight[8:12, :4])  # k part comes from k rows


def test_eval_slice_cache_follows_weight_changes():
    """Eval-mode slices are cached for speed; an in-place weight update must still be seen."""
    torch.manual_seed(0)
    elastic = ElasticLinear(8, 8, bias=True)
    static = nn.Linear(4, 4)
    elastic.configure(static)
    elastic.eval()
    x = torch.randn(3, 4)
    with torch.no_grad():
        first = elastic(x)
        assert torch.equal(elastic(x), first)
        elastic.weight.mul_(2.0)
        assert not torch.equal(elastic(x), first)
        elastic.load_state_dict({"weight": torch.zeros(8, 8), "bias": torch.zeros(8)})
        assert torch.equal(elastic(x), torch.zeros(3, 4))
    assert elastic(x).requires_grad  # with autograd on, slices are views of the trained weights
