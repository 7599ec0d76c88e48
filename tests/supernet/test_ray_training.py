"""Distributed training on Ray Train: 2 CPU workers, a few steps, a checkpoint that loads."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from supernet import Supernet


@pytest.mark.slow
def test_two_cpu_workers_train_and_the_result_loads(local_ray, tmp_path):
    from supernet.train import train_on_ray
    from supernet.training import TrainConfig

    config = TrainConfig(space="edgevit", data="synthetic:64", mode="sandwich", epochs=1, batch_size=16, resolution=32, val_random=1)
    out = tmp_path / "ray.pt"
    scratch = Path(tempfile.gettempdir())
    before = set(scratch.glob("latnas-train-*"))
    summary = train_on_ray(config, out, resume=None, workers=2, address=None)
    assert set(scratch.glob("latnas-train-*")) <= before, "a worker left its checkpoint folder behind"
    assert summary["ray_workers"] == 2 and summary["epochs"] == 1
    net = Supernet.load(out, space="edgevit")
    payload = __import__("torch").load(out, weights_only=True)
    training = payload["extra"]["training"]
    assert training["epoch"] == 1
    # each worker saw half of the 64 images: 2 steps of 16 per worker in the epoch
    assert training["step"] == 2
    json.dumps(training["history"])
    assert net.resolution == 32
