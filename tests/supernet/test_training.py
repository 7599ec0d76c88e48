"""Supernet training: both modes learn, a resumed run equals an uninterrupted one, BN
recalibration leaves the supernet alone, settings outside their ranges are refused, a diverging run
stops keeping its last good checkpoint, and the command line refuses bad input in one line."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from supernet import CheckpointError, Supernet, read_checkpoint
from supernet.data import load_data
from supernet.train import PROG, main
from supernet.training import TrainConfig, Trainer, TrainingDiverged, accuracy, evaluate, recalibrate_bn
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


@pytest.mark.parametrize("sampling, paths_per_slot", [("hard", {1}), ("soft", None)])
def test_gumbel_sampling_runs_one_path_per_slot_when_hard(tmp_path, monkeypatch, sampling, paths_per_slot):
    """Hard sampling trains the sub-networks a search evaluates: one path per slot and step, α
    still learning (straight through); soft runs every path of every slot."""
    config = _config("edgenext", "gumbel", epochs=1, gumbel_sampling=sampling)
    bundle = load_data(DATA, 32, seed=0)
    trainer = Trainer(config, bundle, tmp_path / "net.pt", progress=False)
    trainer.supernet.set_arch(trainer.largest)
    runs: dict[int, int] = {}
    from supernet.supernet import MetaPath

    original = MetaPath._run_path

    def counted(self, index, x):
        runs[id(self)] = runs.get(id(self), 0) + 1
        return original(self, index, x)

    monkeypatch.setattr(MetaPath, "_run_path", counted)
    images, labels = next(iter(torch.utils.data.DataLoader(bundle.train, batch_size=16)))
    alphas = [path.alpha.detach().clone() for _, path in trainer.supernet.metapaths()]
    trainer.train_step(images, labels, np.random.default_rng(0))
    slots = [path for _, path in trainer.supernet.metapaths()]
    expected = paths_per_slot or {len(path.paths) for path in slots}
    assert set(runs.values()) <= expected and len(runs) == len(slots)
    assert any(not torch.equal(before, path.alpha) for before, path in zip(alphas, slots))


def test_gumbel_sampling_is_refused_outside_its_choices():
    with pytest.raises(ValueError, match="gumbel_sampling"):
        _config("edgenext", "gumbel", gumbel_sampling="straight")


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


def test_resume_reads_a_config_field_the_checkpoint_predates_as_its_default(tmp_path):
    bundle = load_data(DATA, 32, seed=0)
    trainer = Trainer(_config(epochs=1), bundle, tmp_path / "old.pt", progress=False)
    trainer.run()
    payload = torch.load(tmp_path / "old.pt", weights_only=True)
    del payload["extra"]["training"]["config"]["train_images"]  # as written before the field existed,
    del payload["content_sha256"]  # which also predates checkpoint digests
    torch.save(payload, tmp_path / "old.pt")
    Trainer(_config(epochs=2), bundle, tmp_path / "old.pt", progress=False).load(tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="trained with train_images=0, this run has train_images=48"):
        Trainer(_config(epochs=2, train_images=48), bundle, tmp_path / "b.pt", progress=False).load(tmp_path / "old.pt")


def test_a_gumbel_checkpoint_from_before_the_sampling_setting_resumes_as_soft(tmp_path):
    """Gumbel runs mixed every path (soft) before `gumbel_sampling` existed, whose default is now
    hard: resuming such a checkpoint with the default must be refused, not silently switch."""
    bundle = load_data(DATA, 32, seed=0)
    trainer = Trainer(_config("edgenext", "gumbel", epochs=1, gumbel_sampling="soft"), bundle, tmp_path / "old.pt",
                      progress=False)
    trainer.run()
    payload = torch.load(tmp_path / "old.pt", weights_only=True)
    del payload["extra"]["training"]["config"]["gumbel_sampling"]
    del payload["content_sha256"]
    torch.save(payload, tmp_path / "old.pt")
    soft = Trainer(_config("edgenext", "gumbel", epochs=2, gumbel_sampling="soft"), bundle, tmp_path / "a.pt", progress=False)
    soft.load(tmp_path / "old.pt")
    assert soft.epoch == 1
    with pytest.raises(CheckpointError, match="trained with gumbel_sampling='soft', this run has gumbel_sampling='hard'"):
        Trainer(_config("edgenext", "gumbel", epochs=2), bundle, tmp_path / "b.pt", progress=False).load(tmp_path / "old.pt")


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
        (["--epochs", "0"], "--epochs: must be an integer in 1..10000"),
        (["--mode", "slimmable"], "invalid choice"),
        (["--student-target", "both"], "invalid choice"),
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


# --- settings out of range, divergence ----------------------------------------------------------------------------


@pytest.mark.parametrize("field, value, words", [
    ("weight_decay", float("inf"), "weight_decay: must be a number in [0, 10], got inf"),
    ("lr", float("nan"), "lr: must be a number in (0, 10]"),
    ("seed", 10**23, "seed: must be an integer in 0..4294967295"),
    ("resolution", 100000, "resolution: must be an integer in 16..1024 px"),
    ("resolution", 48, "resolution: must be a multiple of 32 for edgevit"),
    ("label_smoothing", 1.0, "label_smoothing"),
    ("train_images", 10**12, "train_images"),
    ("tau_end", 9.0, "tau_end: must be at most tau_start"),
    ("space", "mobilenet", "space: unknown space 'mobilenet'"),
    ("batch_size", True, "batch_size"),
    ("student_target", "both", "student_target"),
])
def test_train_config_refuses_settings_outside_their_ranges(field, value, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        _config(**{field: value})


def _diverge_in_epoch_two(monkeypatch):
    loss = Trainer._loss

    def poisoned(self, logits, labels):
        value = loss(self, logits, labels)
        return value * float("nan") if self.epoch == 1 else value

    monkeypatch.setattr(Trainer, "_loss", poisoned)


def test_a_diverging_run_stops_before_the_weights_move_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    bundle = load_data(DATA, 32, seed=0)
    trainer = Trainer(_config(epochs=2), bundle, tmp_path / "net.pt", progress=False)
    _diverge_in_epoch_two(monkeypatch)
    with pytest.raises(TrainingDiverged) as caught:
        trainer.run()
    message = str(caught.value)
    assert "training diverged in epoch 2, step 1 (step 4 of the run): the loss is nan" in message
    assert "lower learning rate (lr 0.002)" in message and f"{tmp_path / 'net.pt'} keeps epoch 1" in message
    assert "\n" not in message
    saved = read_checkpoint(tmp_path / "net.pt")
    assert saved["extra"]["training"]["epoch"] == 1
    # no optimizer step on the bad gradients: the parameters are those saved after epoch 1
    assert all(torch.equal(saved["state_dict"][name], value) for name, value in trainer.supernet.named_parameters())


def test_the_command_line_reports_divergence_in_one_line_exit_2(tmp_path, capsys, monkeypatch):
    out = tmp_path / "net.pt"
    _diverge_in_epoch_two(monkeypatch)
    code, _, err = _run(["--space", "edgevit", "--data", "synthetic:64", "--mode", "sandwich", "--epochs", "2",
                         "--batch-size", "32", "--out", str(out), "--quiet"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "training diverged in epoch 2, step 1" in err and "keeps epoch 1" in err
    assert read_checkpoint(out)["extra"]["training"]["epoch"] == 1


def test_sandwich_students_learn_the_teacher_the_labels_or_half_of_each(tmp_path):
    """`student_target`: soft cross-entropy with the largest network's probabilities, the labels'
    (label-smoothed) loss, or their mean; one step with each moves the weights differently, and the
    default is in-place distillation."""
    assert _config().student_target == "teacher"
    bundle = load_data(DATA, 32, seed=0)
    logits, labels = torch.randn(6, 10), torch.tensor([0, 1, 2, 3, 4, 5])
    teacher = torch.softmax(torch.randn(6, 10), dim=1)
    distilled = float(-(teacher * torch.log_softmax(logits, dim=1)).sum(1).mean())
    supervised = float(F.cross_entropy(logits, labels, label_smoothing=0.1))
    losses = {}
    for target in ("teacher", "labels", "mixed"):
        trainer = Trainer(_config(student_target=target), bundle, tmp_path / "s.pt", progress=False)
        losses[target] = float(trainer._student_loss(logits, teacher, labels))
    assert losses == pytest.approx({"teacher": distilled, "labels": supervised, "mixed": (distilled + supervised) / 2})

    images, targets = next(iter(torch.utils.data.DataLoader(bundle.train, batch_size=16)))
    weights = {}
    for target in ("teacher", "labels"):
        trainer = Trainer(_config(student_target=target), bundle, tmp_path / "s.pt", progress=False)
        trainer.train_step(images, targets, np.random.default_rng(0))
        weights[target] = torch.cat([p.detach().flatten() for p in trainer.supernet.weight_parameters()])
    assert not torch.equal(weights["teacher"], weights["labels"])
