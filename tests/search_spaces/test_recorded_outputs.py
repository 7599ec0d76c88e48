"""Outputs and weight layouts recorded before a change to how blocks are written, checked after it.

Rewriting a block for a faster export (latnas issue 14: channels-first LayerNorm through
`F.layer_norm`, EdgeNeXt's MLP as 1x1 convolutions) must not change the function or the weights a
checkpoint holds. `data/recorded_outputs.json` was written by the code *before* such a change
(`python -m tests.search_spaces.test_recorded_outputs --write`, at the commit named in the file;
`--add-missing` records a space added later, each such entry naming its own commit);
these tests check that every reference network and every supernet built now from the same seed
has the same parameter and buffer names and shapes (so checkpoints written then load now) and the
same logits (relative difference ≤ 1e-5).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from search_spaces import build_model, get_space, list_spaces

RECORD = Path(__file__).parent / "data" / "recorded_outputs.json"
RESOLUTION = 64  # every stage of every space sees at least a 2x2 map; small enough to be fast
NUM_CLASSES = 10
TOLERANCE = 1e-5


def _layout_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of the sorted (name, shape) pairs: what a checkpoint's loader must find."""
    text = json.dumps(sorted((name, list(tensor.shape)) for name, tensor in state.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def _images(resolution: int) -> torch.Tensor:
    return torch.randn(2, 3, resolution, resolution, generator=torch.Generator().manual_seed(1))


def reference_outputs(space_name: str, reference: str) -> dict:
    arch = dataclasses.replace(get_space(space_name).reference(reference), resolution=RESOLUTION, num_classes=NUM_CLASSES)
    torch.manual_seed(0)
    model = build_model(arch).eval()
    with torch.no_grad():
        logits = model(_images(RESOLUTION))
    return {"layout": _layout_digest(model.state_dict()), "logits": logits.tolist()}


def supernet_outputs(space_name: str) -> dict:
    from supernet import Supernet

    torch.manual_seed(0)
    net = Supernet.from_space(space_name, num_classes=NUM_CLASSES, resolution=RESOLUTION).eval()
    space = get_space(space_name)
    archs = [space.largest(), space.smallest(), space.sample(np.random.default_rng(3))]
    logits = []
    with torch.no_grad():
        for arch in archs:
            net.set_arch(net.fit(arch))
            logits.append(net(_images(RESOLUTION)).tolist())
    return {"layout": _layout_digest(net.state_dict()), "logits": logits}


def _references() -> list[tuple[str, str]]:
    return [(name, ref) for name in list_spaces() for ref in get_space(name).references()]


def _recorded() -> dict:
    return json.loads(RECORD.read_text(encoding="utf-8"))


def _assert_close(now, then) -> None:
    now, then = np.asarray(now), np.asarray(then)
    assert now.shape == then.shape
    assert float(np.abs(now - then).max() / np.abs(then).max()) <= TOLERANCE


@pytest.mark.parametrize(("space_name", "reference"), _references())
def test_reference_network_keeps_its_weights_layout_and_logits(space_name: str, reference: str) -> None:
    recorded = _recorded()["references"].get(f"{space_name}/{reference}")
    if recorded is None:
        pytest.skip(f"{space_name}/{reference} was added after the record was written")
    now = reference_outputs(space_name, reference)
    assert now["layout"] == recorded["layout"], "parameter/buffer names or shapes changed: old checkpoints would not load"
    _assert_close(now["logits"], recorded["logits"])


@pytest.mark.slow
@pytest.mark.parametrize("space_name", list_spaces())
def test_supernet_keeps_its_checkpoint_layout_and_logits(space_name: str) -> None:
    recorded = _recorded()["supernets"].get(space_name)
    if recorded is None:
        pytest.skip(f"{space_name} was added after the record was written")
    now = supernet_outputs(space_name)
    assert now["layout"] == recorded["layout"], "supernet state-dict names or shapes changed: old checkpoints would not load"
    for then, current in zip(recorded["logits"], now["logits"], strict=True):
        _assert_close(current, then)


def write_record(commit: str) -> None:
    """Record the current code's outputs (run before changing how blocks are written)."""
    record = {
        "about": "outputs of the code at `commit`; see tests/search_spaces/test_recorded_outputs.py",
        "commit": commit,
        "torch": torch.__version__,
        "resolution": RESOLUTION,
        "num_classes": NUM_CLASSES,
        "references": {f"{s}/{r}": reference_outputs(s, r) for s, r in _references()},
        "supernets": {name: supernet_outputs(name) for name in list_spaces()},
    }
    RECORD.parent.mkdir(exist_ok=True)
    RECORD.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def add_missing(commit: str) -> list[str]:
    """Record the networks and supernets the record lacks (a space added after it was written),
    each entry naming the commit it was recorded at; what is recorded already is left untouched."""
    record = _recorded()
    added = []
    for s, r in _references():
        if f"{s}/{r}" not in record["references"]:
            record["references"][f"{s}/{r}"] = {**reference_outputs(s, r), "commit": commit}
            added.append(f"{s}/{r}")
    for name in list_spaces():
        if name not in record["supernets"]:
            record["supernets"][name] = {**supernet_outputs(name), "commit": commit}
            added.append(name)
    RECORD.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return added


if __name__ == "__main__":
    if sys.argv[1:2] not in (["--write"], ["--add-missing"]) or len(sys.argv) != 3:
        sys.exit("usage: python -m tests.search_spaces.test_recorded_outputs --write|--add-missing COMMIT")
    if sys.argv[1] == "--write":
        write_record(sys.argv[2])
    else:
        print("recorded:", ", ".join(add_missing(sys.argv[2])) or "nothing (the record is complete)")
