"""The supernet contract: supernet(x) == extract(arch)(x), extraction loads into build_model,
set_arch never changes weights, and architectures of the wrong shape are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from search_spaces import ArchitectureError, build_model

from .conftest import NUM_CLASSES, RESOLUTION


def _architectures(space, net, count=30, seed=0):
    rng = np.random.default_rng(seed)
    archs = {"largest": space.largest(), "smallest": space.smallest()}
    archs.update({f"ref:{name}": space.reference(name) for name in space.references()})
    archs.update({f"sample:{i}": space.sample(rng) for i in range(count)})
    return {name: net.fit(arch) for name, arch in archs.items()}


def _relative_error(output, expected):
    return float((output - expected).abs().max() / expected.abs().max().clamp_min(1e-6))


def test_supernet_equals_the_extracted_network(space_supernet):
    space, net = space_supernet
    torch.manual_seed(1)
    images = torch.randn(2, 3, RESOLUTION, RESOLUTION)
    failures = {}
    for name, arch in _architectures(space, net).items():
        net.set_arch(arch)
        with torch.no_grad():
            shared = net(images)
            static = net.extract(arch).eval()(images)
        assert shared.shape == (2, NUM_CLASSES)
        error = _relative_error(shared, static)
        if error > 1e-5:
            failures[name] = error
    assert not failures, failures


def test_extracted_state_dict_loads_into_build_model(space_supernet):
    space, net = space_supernet
    arch = net.fit(space.sample(np.random.default_rng(5)))
    extracted = net.extract(arch).eval()
    rebuilt = build_model(arch)
    rebuilt.load_state_dict(extracted.state_dict(), strict=True)
    images = torch.randn(2, 3, RESOLUTION, RESOLUTION)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(images), extracted(images))


def test_set_arch_and_extract_leave_the_weights_alone(small_supernet):
    net = small_supernet
    before = {name: tensor.clone() for name, tensor in net.state_dict().items()}
    rng = np.random.default_rng(2)
    for _ in range(3):
        arch = net.fit(net.space.sample(rng))
        net.set_arch(arch)
        net.extract(arch)
    after = net.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_wrong_resolution_or_classes_are_refused(small_supernet):
    space = small_supernet.space
    with pytest.raises(ArchitectureError) as caught:
        small_supernet.set_arch(space.largest())  # 224, 1000 classes
    assert caught.value.path == "resolution"
    with pytest.raises(ArchitectureError) as caught:
        small_supernet.extract(space.largest(resolution=RESOLUTION))
    assert caught.value.path == "num_classes"


def test_identity_slots_skip_their_blocks(small_supernet):
    """An identity slot in the middle of a stage runs nothing: the later blocks keep their weights."""
    net = small_supernet.eval()
    space = net.space
    arch = net.fit(space.largest())
    stage = arch.stages[2]
    holed = arch.replace_stage(2, type(stage)(stage.width, (stage.blocks[0], type(stage.blocks[0])("identity")) + stage.blocks[2:]))
    net.set_arch(holed)
    assert net.stages[2].blocks[1].active is None
    images = torch.randn(1, 3, RESOLUTION, RESOLUTION)
    with torch.no_grad():
        assert torch.allclose(net(images), net.extract(holed).eval()(images), rtol=1e-5, atol=1e-6)
