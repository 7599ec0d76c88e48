"""`supernet.untrained_norms`: which BatchNorm widths a sub-network runs (read from its layers, as a
forward pass would find them), and the once-per-supernet estimate of the untrained ones."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from supernet.checkpoint import content_digest
from supernet.elastic import SwitchableBatchNorm2d
from supernet.untrained_norms import (
    estimate_file,
    estimate_untrained_norms,
    images_digest,
    norm_widths,
    stored_estimate,
    switchable_norms,
    untrained_batch_norms,
    untrained_norm_widths,
)
from tests.norm_support import largest_widths_trained

from .conftest import RESOLUTION


def _run_norms(net, arch) -> list[tuple[str, int]]:
    """The (norm, width) pairs a forward pass of `arch` runs, from forward hooks: the oracle."""
    found, hooks = [], []
    for name, module in switchable_norms(net):
        hooks.append(module.register_forward_pre_hook(
            lambda module, args, name=name: found.append((name, args[0].shape[1]))))
    net.set_arch(arch)
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3, net.resolution, net.resolution))
    finally:
        for hook in hooks:
            hook.remove()
    return found


def test_norm_widths_are_the_norms_a_forward_pass_runs(space_supernet):
    space, net = space_supernet
    rng = np.random.default_rng(0)
    archs = [space.largest(), space.smallest(), *(space.reference(name) for name in space.references()),
             *(space.sample(rng) for _ in range(6)), *(space.sample_slimmed(rng) for _ in range(6))]
    for arch in archs:
        arch = net.fit(arch)
        assert norm_widths(net, arch) == _run_norms(net, arch), arch
    largest = net.fit(space.largest())
    last = len(space.stages) - 1
    assert set(norm_widths(net, largest, first_stage=last)) == {
        (name, width) for name, width in norm_widths(net, largest)
        if name.startswith(("head", f"stages.{last}."))}


def test_untrained_batch_norms_reads_the_layers_without_running_the_network(small_supernet):
    net = small_supernet
    switchable = [module for _, module in switchable_norms(net)]
    for module in switchable:
        for norm in module.norms.values():
            norm.num_batches_tracked.fill_(1)
    passes = []
    net.register_forward_pre_hook(lambda module, args: passes.append(args[0].shape))
    smallest, largest = net.fit(net.space.smallest()), net.fit(net.space.largest())
    assert untrained_batch_norms(net, smallest) == [] and untrained_norm_widths(net) == ()
    narrowest = next(m for m in switchable if len(m.widths) > 1)
    narrowest.norm_for(narrowest.widths[0]).num_batches_tracked.zero_()
    name = next(name for name, module in switchable_norms(net) if module is narrowest)
    assert untrained_norm_widths(net) == ((name, narrowest.widths[0]),)
    assert untrained_batch_norms(net, largest) == []
    assert untrained_batch_norms(net, smallest) == [f"{name}[{narrowest.widths[0]}]"]
    assert passes == []


def _images(count: int = 3, batch: int = 16, resolution: int = 32) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(batch, 3, resolution, resolution, generator=generator) for _ in range(count)]


@pytest.mark.parametrize("space", ["edgevit", "efficientformer_v2"])
def test_the_estimate_is_what_the_first_network_to_run_a_width_measures(space):
    """The largest network with its last stage one width narrower runs untrained norms at that
    width; the first of them in layer order is estimated in that network, after trained norms only,
    so its statistics are exactly the mean and unbiased variance of its input there, averaged over
    the batches. Every untrained width gets statistics, trained ones keep theirs, and the supernet
    keeps its architecture and mode."""
    net = largest_widths_trained(space)
    untrained = set(untrained_norm_widths(net))
    last = len(net.space.stages) - 1
    largest = net.fit(net.space.largest())
    width = net.space.stages[last].widths[-2]
    narrower = largest.replace_stage(last, type(largest.stages[last])(width, largest.stages[last].blocks))
    first = next(pair for pair in norm_widths(net, narrower) if pair in untrained)
    inputs = []
    hook = dict(switchable_norms(net))[first[0]].register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    images = _images()
    net.set_arch(narrower)
    with torch.no_grad():
        for batch in images:
            net(batch)
    hook.remove()
    expected_mean = torch.stack([x.mean(dim=(0, 2, 3)) for x in inputs]).mean(0)
    expected_var = torch.stack([x.transpose(0, 1).flatten(1).var(dim=1) for x in inputs]).mean(0)

    before = {name: tensor.clone() for name, tensor in net.state_dict().items()}
    net.set_mode("gumbel", tau=0.5)
    smallest = net.fit(net.space.smallest())
    net.set_arch(smallest)
    estimate = estimate_untrained_norms(net, images)
    assert net.arch == smallest and net.mode == "gumbel" and not net.training
    net.set_mode("fixed")

    assert set(estimate.estimated) == untrained and len(estimate.estimated) == len(untrained)
    assert not estimate.unreachable and untrained_norm_widths(net) == ()
    assert estimate.images == 48 and 0 < estimate.passes <= len(untrained)
    norm = dict(switchable_norms(net))[first[0]].norm_for(first[1])
    torch.testing.assert_close(norm.running_mean, expected_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norm.running_var, expected_var, rtol=1e-4, atol=1e-5)
    after = net.state_dict()
    assert {name for name in before if not torch.equal(before[name], after[name])} == {
        f"{name}.norms.{width}.{buffer}" for name, width in untrained
        for buffer in ("running_mean", "running_var", "num_batches_tracked")}
    modules = dict(switchable_norms(net))
    assert all(modules[name].norm_for(width).momentum == 0.1 for name, width in untrained)


def test_the_estimate_is_deterministic_and_says_what_no_network_runs():
    net = largest_widths_trained()
    module_name, module = next((name, m) for name, m in switchable_norms(net) if len(m.widths) > 1)
    module.norms["3"] = nn.BatchNorm2d(3)  # a width no sub-network has
    twin = copy.deepcopy(net)
    first, second = estimate_untrained_norms(net, _images()), estimate_untrained_norms(twin, _images())
    assert first.estimated == second.estimated and first.unreachable == second.unreachable == ((module_name, 3),)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), twin.state_dict().values(), strict=True))
    again = estimate_untrained_norms(net, _images())
    assert again.estimated == () and again.unreachable == ((module_name, 3),)
    assert "[3]" in first.to_dict()["unreachable"][0]


def test_a_fresh_supernet_gets_every_width_estimated_the_head_after_the_last_stage():
    """Nothing trained (the head's norm too): a base pass that estimates a head width runs every
    stage before the head, whichever stage it started from."""
    from supernet import Supernet

    torch.manual_seed(0)
    net = Supernet.from_space("edgevit", num_classes=10, resolution=32)
    untrained = set(untrained_norm_widths(net))
    assert any(name.startswith("head") for name, _ in untrained)
    estimate = estimate_untrained_norms(net, _images(count=1, batch=8))
    assert set(estimate.estimated) == untrained and not estimate.unreachable and untrained_norm_widths(net) == ()


def test_a_trained_supernet_is_left_alone(small_supernet):
    net = small_supernet
    for _, module in switchable_norms(net):
        for norm in module.norms.values():
            norm.num_batches_tracked.fill_(1)
    before = {name: tensor.clone() for name, tensor in net.state_dict().items()}
    estimate = estimate_untrained_norms(net, _images(resolution=RESOLUTION))
    assert estimate.estimated == () and estimate.passes == 0
    assert all(torch.equal(before[name], tensor) for name, tensor in net.state_dict().items())
    assert isinstance(next(module for _, module in switchable_norms(net)), SwitchableBatchNorm2d)


def test_a_kept_estimate_is_read_back_bit_identical_and_only_for_its_weights_and_images(tmp_path):
    net = largest_widths_trained()
    twin, other = copy.deepcopy(net), copy.deepcopy(net)
    weights = content_digest(dict(net.state_dict()))
    images = _images()
    digest = images_digest(images)
    path = estimate_file(tmp_path / "supernet.pt", weights, digest)
    assert path.parent == tmp_path and path.name.startswith("supernet.pt.untrained-norms-")
    assert images_digest(_images(count=2)) != digest and images_digest(list(reversed(images))) != digest
    assert estimate_file(tmp_path / "supernet.pt", weights, images_digest(_images(count=2))) != path
    assert estimate_file(tmp_path / "supernet.pt", "0" * 64, digest) != path

    first = stored_estimate(net, images, path, weights, digest)
    assert not first.read and first.kept_in == str(path) and path.is_file() and first.passes > 0
    passes = []
    twin.register_forward_pre_hook(lambda module, args: passes.append(1))
    for _, module in switchable_norms(twin):
        module.register_forward_pre_hook(lambda module, args: passes.append(1))
    second = stored_estimate(twin, images, path, weights, digest)
    assert second.read and passes == [] and untrained_norm_widths(twin) == ()
    assert (second.estimated, second.unreachable, second.passes) == (first.estimated, first.unreachable, first.passes)
    assert second.to_dict()["read"] is True and second.to_dict()["kept_in"] == path.name
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), twin.state_dict().values(), strict=True))

    # the same file asked for by other weights: estimated afresh, and the file now holds theirs
    third = stored_estimate(other, images, path, "0" * 64, digest)
    assert not third.read and third.passes == first.passes and untrained_norm_widths(other) == ()


def test_a_damaged_or_unwritable_kept_estimate_is_estimated_again(tmp_path):
    net = largest_widths_trained()
    weights, images = content_digest(dict(net.state_dict())), _images(count=1)
    digest = images_digest(images)
    reference = copy.deepcopy(net)
    estimate_untrained_norms(reference, images)
    path = tmp_path / "supernet.pt.untrained-norms-damaged.pt"
    path.write_bytes(b"not a checkpoint")
    fresh = copy.deepcopy(net)
    estimate = stored_estimate(fresh, images, path, weights, digest)
    assert not estimate.read and estimate.kept_in == str(path)
    assert stored_estimate(copy.deepcopy(net), images, path, weights, digest).read
    assert not stored_estimate(copy.deepcopy(net), images, path, weights, images_digest(_images(count=2))).read
    (tmp_path / "a file").write_text("not a folder")
    unkept = stored_estimate(net, images, tmp_path / "a file" / "estimate.pt", weights, digest)
    assert unkept.kept_in is None and not unkept.read and unkept.passes == estimate.passes
    for state in (fresh.state_dict(), net.state_dict()):
        assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), state.values(), strict=True))
