"""Supernet checkpoints: exact round trip of weights, switchable BNs and α; a content digest and finite
weights checked on reading (legacy files without a digest accepted when finite); bad files refused in
one line naming the file."""

from __future__ import annotations

import pytest
import torch

from search_spaces.limits import MAX_CHECKPOINT_BYTES
from supernet import CheckpointError, Supernet, read_checkpoint
from supernet.checkpoint import DIGEST_KEY, content_digest

from .conftest import RESOLUTION, flip_tensor_bytes, randomise_norms


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


# --- content digest, finiteness, legacy files ---------------------------------------------------------------------


def test_a_checkpoint_carries_a_digest_that_catches_flipped_bytes(small_supernet, tmp_path):
    path = tmp_path / "net.pt"
    small_supernet.save(path)
    payload = torch.load(path, weights_only=True)
    assert payload[DIGEST_KEY] == content_digest(payload)
    flipped = flip_tensor_bytes(path, tmp_path / "flipped.pt")
    with pytest.raises(CheckpointError, match="does not match its sha256 digest") as caught:
        Supernet.load(flipped)
    assert str(flipped) in str(caught.value) and "\n" not in str(caught.value)


def test_the_digest_is_canonical_and_covers_every_entry():
    weights = {"b": torch.arange(4.0), "a": torch.ones(2, 2)}
    payload = {"format": "x", "state_dict": weights, "extra": {"history": [1.5, None], "step": 3}}
    reordered = {"extra": {"step": 3, "history": [1.5, None]}, "state_dict": dict(reversed(weights.items())), "format": "x"}
    assert content_digest(payload) == content_digest(reordered) == content_digest({**payload, DIGEST_KEY: "ignored"})
    for changed in ({**payload, "extra": {"history": [1.5, None], "step": 4}},
                    {**payload, "state_dict": {**weights, "a": torch.ones(4)}},  # same bytes, another shape
                    {**payload, "state_dict": {**weights, "a": torch.ones(2, 2, dtype=torch.float64)}},
                    {**payload, "state_dict": {**weights, "c": torch.ones(0)}}):
        assert content_digest(changed) != content_digest(payload)


def test_a_legacy_checkpoint_without_digest_loads_when_finite_and_not_otherwise(small_supernet, tmp_path):
    path = tmp_path / "legacy.pt"
    small_supernet.save(path)
    payload = torch.load(path, weights_only=True)
    del payload[DIGEST_KEY]  # as checkpoints were written before the digest
    torch.save(payload, path)
    loaded = Supernet.load(path, space="edgevit")
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in small_supernet.state_dict().items())
    next(value for value in payload["state_dict"].values() if value.is_floating_point()).fill_(float("inf"))
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="holds NaN or inf values"):
        Supernet.load(path)


def test_non_finite_weights_are_never_written(small_supernet, tmp_path):
    path = tmp_path / "net.pt"
    small_supernet.save(path)
    before = path.read_bytes()
    with torch.no_grad():
        small_supernet.arch_parameters()[0][0] = float("nan")
    with pytest.raises(CheckpointError, match="refusing to write .* holds NaN or inf"):
        small_supernet.save(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["net.pt"]


@pytest.mark.parametrize("field, value, words", [
    ("resolution", 100000, "resolution 100000 is not an input size of edgevit"),
    ("resolution", 48, "resolution 48 is not an input size of edgevit"),
    ("num_classes", 10**11, "num_classes 100000000000 is not an integer in 1..100000"),
    ("space", "mobilenet", "space 'mobilenet' is not one of"),
])
def test_forged_fields_are_blamed_on_the_checkpoint(small_supernet, tmp_path, field, value, words):
    path = tmp_path / "forged.pt"
    small_supernet.save(path)
    payload = torch.load(path, weights_only=True)
    payload[field] = value
    payload[DIGEST_KEY] = content_digest(payload)  # a forger who recomputes the digest
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=words) as caught:
        read_checkpoint(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_files_that_are_not_regular_are_refused_before_reading(tmp_path):
    import os

    os.mkfifo(tmp_path / "fifo.pt")
    with pytest.raises(CheckpointError, match="is a FIFO"):
        read_checkpoint(tmp_path / "fifo.pt")
    with pytest.raises(CheckpointError, match=f"--resume: {tmp_path}: is a directory"):
        read_checkpoint(tmp_path, option="--resume")
    with open(tmp_path / "huge.pt", "wb") as stream:
        stream.truncate(MAX_CHECKPOINT_BYTES + 1)
    with pytest.raises(CheckpointError, match="more than the"):
        read_checkpoint(tmp_path / "huge.pt")
