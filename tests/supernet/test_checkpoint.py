"""Supernet checkpoints: exact round trip of weights, switchable BNs and α; bad files refused in one line."""

from __future__ import annotations

import pytest
import torch

from supernet import CheckpointError, Supernet

from .conftest import RESOLUTION, randomise_norms


def test_round_trip_keeps_weights_norms_and_logits(small_supernet, tmp_path):
    net = small_supernet
    randomise_norms(net, seed=9)
    with torch.no_grad():
        for alpha in net.arch_parameters():
            alpha.normal_()
    path = tmp_path / "net.pt"
    net.save(path, extra={"epoch": 3})
    loaded = Supernet.load(path, space="edgevit")
    assert loaded.space.name == "edgevit" and loaded.resolution == RESOLUTION
    loaded_state = loaded.state_dict()
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, loaded_state[name]), name
    arch = net.fit(net.space.sample(__import__("numpy").random.default_rng(1)))
    for model in (net, loaded):
        model.set_arch(arch)
        model.eval()
    images = torch.randn(2, 3, RESOLUTION, RESOLUTION)
    with torch.no_grad():
        assert torch.equal(net(images), loaded(images))
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "latnas/supernet@1" and payload["extra"] == {"epoch": 3}
    assert set(payload["arch_logits"]) == {f"{i}.{s}" for (i, s), _ in net.metapaths()}


def test_truncated_file_is_one_line_error(small_supernet, tmp_path):
    path = tmp_path / "net.pt"
    small_supernet.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as caught:
        Supernet.load(path)
    assert "\n" not in str(caught.value)


def test_foreign_and_missing_files_are_refused(tmp_path):
    foreign = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a latnas supernet checkpoint"):
        Supernet.load(foreign)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        Supernet.load(tmp_path / "absent.pt")


def test_supernet_of_another_space_is_refused(small_supernet, tmp_path):
    path = tmp_path / "net.pt"
    small_supernet.save(path)
    with pytest.raises(CheckpointError, match="space 'edgevit', not 'edgenext'"):
        Supernet.load(path, space="edgenext")


def test_save_is_atomic_and_keeps_the_old_file_on_failure(small_supernet, tmp_path, monkeypatch):
    path = tmp_path / "net.pt"
    small_supernet.save(path)
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", fail)
    with pytest.raises(OSError):
        small_supernet.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["net.pt"]
