"""Supernet training: both modes learn, a resumed run equals an uninterrupted one, BN
recalibration leaves the supernet alone, and the command line refuses bad input in one line."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from supernet import CheckpointError, Supernet
from supernet.data import load_data
from supernet.train import PROG, main
from supernet.training import TrainConfig, Trainer, accuracy, evaluate, recalibrate_bn
from tests.cli_support import invoke

DATA = "synthetic:96"


def _config(space="edgevit", mode="sandwich", epochs=2, **overrides):
    settings = dict(space=space, data=DATA, mode=mode, epochs=epochs, batch_size=32, resolution=32, val_random=1, warmup_epochs=0.5)
    settings.update(overrides)
    return TrainConfig(**settings)


def _fixed_batch_loss(trainer, images, labels):
    net = trainer.supernet
    net.set_mode("fixed")
    net.set_arch(trainer.largest)
    with torch.no_grad():
        return float(F.cross_entropy(net(images), labels))


@pytest.mark.parametrize("space, mode", [("edgevit", "sandwich"), ("edgenext", "gumbel")])
def test_a_few_steps_reduce_the_loss(tmp_path, space, mode):
    config = _config(space, mode, epochs=3, lr=3e-3)
    bundle = load_data(DATA, 32, seed=0)
    trainer = Trainer(config, bundle, tmp_path / "net.pt", progress=False)
    images, labels = next(iter(torch.utils.data.DataLoader(bundle.train, batch_size=64)))
    before = _fixed_batch_loss(trainer, images, labels)
    trainer.run()
    after = _fixed_batch_loss(trainer, images, labels)
    assert after < before
    records = [json.loads(line) for line in trainer.metrics_path.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert {"val_largest", "val_smallest", "val_random", "images_per_second"} <= set(records[0])
    if mode == "gumbel":
        importance = trainer.importance()
        assert len(importance["stages"]) == 4 and all(v > 0 for v in importance["slots"].values())
        assert importance["trained"]  # α moved from zero


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path):
    config = _config(epochs=2)
    bundle = load_data(DATA, 32, seed=0)
    straight = Trainer(config, bundle, tmp_path / "straight.pt", progress=False)
    straight.run()

    crashed = Trainer(config, bundle, tmp_path / "crashed.pt", progress=False)
    with pytest.raises(KeyboardInterrupt):
        crashed.run(stop_after_steps=crashed.steps_per_epoch + 1)  # dies inside epoch 2
    resumed = Trainer(config, bundle, tmp_path / "crashed.pt", progress=False)
    resumed.load(tmp_path / "crashed.pt")
    assert resumed.epoch == 1
    resumed.run()

    expected, actual = straight.supernet.state_dict(), resumed.supernet.state_dict()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    assert resumed.history == straight.history or [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    bundle = load_data(DATA, 32, seed=0)
    trainer = Trainer(_config(epochs=1), bundle, tmp_path / "a.pt", progress=False)
    trainer.run()
    other = Trainer(_config(epochs=1, seed=7), bundle, tmp_path / "b.pt", progress=False)
    with pytest.raises(CheckpointError, match="seed=0"):
        other.load(tmp_path / "a.pt")


def test_recalibrate_bn_is_pure_and_evaluate_reports_accuracy(tmp_path):
    bundle = load_data(DATA, 32, seed=0)
    net = Supernet.from_space("edgevit", num_classes=bundle.num_classes, resolution=32)
    arch = net.fit(net.space.smallest())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loader = torch.utils.data.DataLoader(bundle.train, batch_size=16)
    network = recalibrate_bn(net, arch, loader, batches=2)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    head_norm = network.head.norm
    assert int(head_norm.num_batches_tracked) == 2
    assert not torch.equal(head_norm.running_mean, torch.zeros_like(head_norm.running_mean))
    score = evaluate(net, arch, torch.utils.data.DataLoader(bundle.val, batch_size=32))
    assert 0.0 <= score <= 1.0
    assert accuracy(network, torch.utils.data.DataLoader(bundle.val, batch_size=32)) >= 0.0


def _run(argv, capsys):
    return invoke(main, PROG, argv, capsys)


def test_command_line_trains_and_writes_checkpoint_and_metrics(tmp_path, capsys):
    out = tmp_path / "runs" / "net.pt"
    code, stdout, _ = _run(
        ["--space", "edgevit", "--data", "synthetic:64", "--mode", "sandwich", "--epochs", "1", "--batch-size", "32", "--out", str(out), "--quiet"],
        capsys,
    )
    assert code == 0
    assert json.loads(stdout)["epochs"] == 1
    assert Supernet.load(out).space.name == "edgevit"
    assert out.with_name("net.pt.metrics.jsonl").exists()


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--space", "mobilenet"], "unknown space 'mobilenet'"),
        (["--data", "imagenet"], "unknown data spec 'imagenet'"),
        (["--data", "imagefolder:/no/such/dir"], "/no/such/dir"),
        (["--epochs", "0"], "invalid positive integer value"),
        (["--mode", "slimmable"], "invalid choice"),
        (["--label-smoothing", "1.5"], "label-smoothing"),
        (["--resume", "/no/such/checkpoint.pt"], "no such checkpoint"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, extra, words):
    argv = {"--space": "edgevit", "--data": "synthetic:64", "--mode": "sandwich", "--epochs": "1", "--out": str(tmp_path / "n.pt")}
    for flag, value in zip(extra[::2], extra[1::2]):
        argv[flag] = value
    code, _, err = _run([item for pair in argv.items() for item in pair] + ["--quiet"], capsys)
    assert code == 2
    assert words in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "n.pt").exists()


def test_corrupt_resume_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    code, _, err = _run(
        ["--space", "edgevit", "--data", "synthetic:64", "--mode", "sandwich", "--epochs", "1", "--out", str(tmp_path / "n.pt"), "--resume", str(broken), "--quiet"],
        capsys,
    )
    assert code == 2 and "truncated or corrupt" in err and len(err.strip().splitlines()) == 1
