"""Bad input to `python -m supernet.train`, as a hostile user would give it: every case is refused
with exit 2 and one line, without a traceback, and leaves the pre-existing `--out` (and every input)
byte-identical. Checkpoint cases go through `--resume`, which reads them with `read_checkpoint`."""

from __future__ import annotations

import os
import pickle
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from search_spaces.limits import MAX_CHECKPOINT_BYTES
from supernet.checkpoint import DIGEST_KEY, content_digest
from supernet.data import IDX_MAX_BYTES, load_data
from supernet.train import PROG, build_parser, config_from_args, main
from supernet.training import Trainer
from tests.reliability.harness import assert_refused, check_one_line, run_module
from tests.supernet.conftest import flip_tensor_bytes

# A supernet cheap to build and save (EdgeNeXt has the fewest weights), on 20 synthetic images.
BASE = {"--space": "edgenext", "--data": "synthetic:20", "--mode": "sandwich", "--epochs": "1", "--batch-size": "20",
        "--resolution": "32", "--num-random": "0"}


def _argv(options: dict[str, object]) -> list[str]:
    argv: list[str] = []
    for flag, value in options.items():
        if value is not None:
            argv += [flag] if value is True else [flag, str(value)]
    return argv + ["--quiet"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A real, resumable checkpoint of the BASE run (supernet and training state before its first step)."""
    out = tmp_path_factory.mktemp("checkpoint") / "base.pt"
    config = config_from_args(build_parser().parse_args(_argv({**BASE, "--out": out})))
    trainer = Trainer(config, load_data(config.data, config.resolution, config.seed), out, progress=False)
    trainer.save(out)
    return out


def _payload(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _save(payload: dict, path: Path, digest: bool = True) -> Path:
    payload = {key: value for key, value in payload.items() if key != DIGEST_KEY}
    if digest:  # a forger who recomputes the digest: the content checks must still refuse it
        payload[DIGEST_KEY] = content_digest(payload)
    torch.save(payload, path)
    return path


# --- ways to damage a checkpoint -------------------------------------------------------------------------------

def _with_nan(source: Path, target: Path, digest: bool) -> Path:
    payload = _payload(source)
    name = next(key for key, value in payload["state_dict"].items() if value.is_floating_point())
    payload["state_dict"][name].view(-1)[0] = float("nan")
    return _save(payload, target, digest)


def _edited(source: Path, target: Path, edit: Callable[[dict], None]) -> Path:
    payload = _payload(source)
    edit(payload)
    return _save(payload, target)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {Path.cwd() / 'evil-pickle-ran'}",))


def _truncated(source: Path, target: Path) -> Path:
    target.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    return target


def _evil_pickle(target: Path) -> Path:
    target.write_bytes(pickle.dumps(_Evil()))
    return target


def _resume(make: Callable[[Path, Path], Path]):
    """A case whose `--resume` is what `make(checkpoint, folder)` builds."""
    return lambda folder, checkpoint: {"--resume": make(checkpoint, folder)}


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as stream:
        stream.truncate(size)
    return path


def _metrics_taken(out: Path) -> Path:
    """`out`, whose metrics file path is taken by a directory."""
    (out.parent / (out.name + ".metrics.jsonl")).mkdir()
    return out


def _cifar_with_fifo(folder: Path) -> Path:
    root = folder / "cifar"
    root.mkdir()
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        (root / name).write_bytes(b"")
    _fifo(root / "batches.meta")
    return root


def _fashion_mnist_oversize(folder: Path) -> Path:
    root = folder / "fm"
    root.mkdir()
    _sparse(root / "train-images-idx3-ubyte", IDX_MAX_BYTES + 100)
    (root / "train-labels-idx1-ubyte").write_bytes(b"")
    return root


# id -> (options to change given (folder, checkpoint); words the one line must contain)
CASES: dict[str, tuple[Callable[[Path, Path], dict[str, object]], str]] = {
    # numbers: out of range, overflowing, not finite
    "seed-overflow": (lambda f, c: {"--seed": "99999999999999999999999"}, "--seed: must be an integer in 0..4294967295"),
    "seed-negative": (lambda f, c: {"--seed": "-1"}, "--seed"),
    "resolution-huge": (lambda f, c: {"--resolution": "100000"}, "--resolution: must be an integer in 16..1024"),
    "resolution-not-a-multiple": (lambda f, c: {"--resolution": "48"}, "--resolution: must be a multiple of 32"),
    "synthetic-huge": (lambda f, c: {"--data": "synthetic:99999999999999"}, "N must be an integer in 10..10000000"),
    "synthetic-not-a-number": (lambda f, c: {"--data": "synthetic:1e3"}, "N must be an integer"),
    "weight-decay-inf": (lambda f, c: {"--weight-decay": "inf"}, "--weight-decay: must be a number in [0, 10]"),
    "weight-decay-nan": (lambda f, c: {"--weight-decay": "nan"}, "--weight-decay"),
    "lr-zero": (lambda f, c: {"--lr": "0"}, "--lr: must be a number in (0, 10]"),
    "lr-overflows-to-inf": (lambda f, c: {"--lr": "1e309"}, "--lr"),
    "arch-lr-nan": (lambda f, c: {"--arch-lr": "nan"}, "--arch-lr"),
    "warmup-negative": (lambda f, c: {"--warmup-epochs": "-1"}, "--warmup-epochs"),
    "warmup-inf": (lambda f, c: {"--warmup-epochs": "inf"}, "--warmup-epochs"),
    "label-smoothing-one": (lambda f, c: {"--label-smoothing": "1"}, "--label-smoothing: must be a number in [0, 0.99]"),
    "label-smoothing-negative": (lambda f, c: {"--label-smoothing": "-0.1"}, "--label-smoothing"),
    "tau-start-zero": (lambda f, c: {"--tau-start": "0"}, "--tau-start"),
    "tau-end-above-start": (lambda f, c: {"--tau-end": "9"}, "--tau-end: must be at most tau_start"),
    "grad-clip-inf": (lambda f, c: {"--grad-clip": "inf"}, "--grad-clip"),
    "batch-size-zero": (lambda f, c: {"--batch-size": "0"}, "--batch-size"),
    "batch-size-huge": (lambda f, c: {"--batch-size": "100000"}, "--batch-size: must be an integer in 1..4096"),
    "epochs-overflow": (lambda f, c: {"--epochs": "99999999999999999999"}, "--epochs"),
    "train-images-huge": (lambda f, c: {"--train-images": "1000000000000"}, "--train-images"),
    "val-images-negative": (lambda f, c: {"--val-images": "-5"}, "--val-images"),
    "num-random-huge": (lambda f, c: {"--num-random": "100000"}, "--num-random: must be an integer in 0..64"),
    "ray-workers-huge": (lambda f, c: {"--ray-workers": "100000"}, "--ray-workers"),
    "space-unknown": (lambda f, c: {"--space": "mobilenet"}, "--space: unknown space 'mobilenet'"),
    # data specs whose files are not regular files or too large
    "cifar-fifo": (lambda f, c: {"--data": f"cifar10:{_cifar_with_fifo(f)}"}, "batches.meta: is a FIFO"),
    "imagefolder-not-a-folder": (lambda f, c: {"--data": f"imagefolder:{c}"}, "is not a directory"),
    "fashion-mnist-oversize": (lambda f, c: {"--data": f"fashion-mnist:{_fashion_mnist_oversize(f)}"}, "bytes, more than"),
    # --resume: not a regular file, too large, missing
    "resume-directory": (_resume(lambda c, f: f), "is a directory, expected a file"),
    "resume-fifo": (_resume(lambda c, f: _fifo(f / "ckpt.pt")), "is a FIFO"),
    "resume-oversize": (_resume(lambda c, f: _sparse(f / "big.pt", MAX_CHECKPOINT_BYTES + 1)), "more than the"),
    "resume-missing": (_resume(lambda c, f: f / "absent.pt"), "no such checkpoint file"),
    # --resume: damaged, forged or foreign checkpoints
    "resume-flipped-bytes": (_resume(lambda c, f: flip_tensor_bytes(c, f / "flipped.pt")), "does not match its sha256 digest"),
    "resume-nan-weights": (_resume(lambda c, f: _with_nan(c, f / "nan.pt", digest=True)), "holds NaN or inf"),
    "resume-nan-weights-legacy": (_resume(lambda c, f: _with_nan(c, f / "nan.pt", digest=False)), "holds NaN or inf"),
    "resume-truncated": (_resume(lambda c, f: _truncated(c, f / "cut.pt")), "truncated or corrupt"),
    "resume-evil-pickle": (_resume(lambda c, f: _evil_pickle(f / "evil.pt")), "truncated or corrupt"),
    "resume-foreign-torch-file": (_resume(lambda c, f: _save({"state_dict": {}}, f / "other.pt", digest=False)),
                                  "not a latnas supernet checkpoint"),
    "resume-forged-resolution": (_resume(lambda c, f: _edited(c, f / "res.pt", lambda p: p.update(resolution=100000))),
                                 "resolution 100000 is not an input size of edgenext"),
    "resume-forged-epoch": (_resume(lambda c, f: _edited(c, f / "ep.pt", lambda p: p["extra"]["training"].update(epoch=-3))),
                            "trained for -3 epochs"),
    "resume-another-seed": (lambda f, c: {"--resume": c, "--seed": "7"}, "trained with seed=0, this run has seed=7"),
    "resume-another-space": (lambda f, c: {"--resume": c, "--space": "edgevit"}, "holds a supernet of edgenext at 32 px"),
    "resume-another-resolution": (lambda f, c: {"--resume": c, "--resolution": "64"}, "this run trains edgenext at 64 px"),
    # outputs
    "out-directory": (lambda f, c: {"--out": f}, "is a directory, expected a file path"),
    "out-fifo": (lambda f, c: {"--out": _fifo(f / "out.fifo")}, "is a FIFO; refusing to replace it"),
    "out-below-a-file": (lambda f, c: {"--out": c / "n.pt"}, "is not a directory"),
    "metrics-file-directory": (lambda f, c: {"--out": _metrics_taken(f / "m.pt")}, "metrics file: "),
    # Ray
    "ray-address-invalid": (lambda f, c: {"--ray-workers": "2", "--ray-address": "256.1.1.1:1"}, "--ray-address"),
    "ray-address-refused": (lambda f, c: {"--ray-workers": "2", "--ray-address": "127.0.0.1:1"},
                            "--ray-address: no Ray cluster answers at 127.0.0.1:1"),
    "ray-address-without-workers": (lambda f, c: {"--ray-address": "127.0.0.1:1"}, "needs --ray-workers"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_in_one_line_and_changes_nothing(case, tmp_path, checkpoint, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where an evil pickle would leave its mark
    folder = tmp_path / "inputs"
    folder.mkdir()
    out = tmp_path / "previous.pt"
    out.write_bytes(b"the checkpoint of a previous run")
    make, words = CASES[case]
    options = {**BASE, "--out": out, **make(folder, checkpoint)}
    given = [Path(value) for flag, value in options.items() if flag in ("--resume", "--out")]
    # every file the run was given stays as it was (the sparse 16 GiB one is too big to compare)
    keep = [out, checkpoint, *(path for path in given if path.is_file() and path.stat().st_size < 1 << 30)]
    started = time.monotonic()
    line = assert_refused(main, PROG, _argv(options), capsys, keep=keep, match=words)
    assert time.monotonic() - started < 60, "a refusal must not take a minute"
    assert "\x00" not in line and len(line) < 400
    assert not (tmp_path / "evil-pickle-ran").exists()
    assert not [path for path in tmp_path.iterdir() if path.name.endswith(".tmp")]


def test_a_directory_given_as_resume_is_named_as_one(tmp_path, capsys):
    out = tmp_path / "n.pt"
    assert_refused(main, PROG, _argv({**BASE, "--out": out, "--resume": tmp_path}), capsys,
                   match=f"--resume: {tmp_path}: is a directory, expected a file")


def test_an_unwritable_output_folder_is_refused(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert_refused(main, PROG, _argv({**BASE, "--out": folder / "n.pt"}), capsys, match="permission denied")
    finally:
        folder.chmod(stat.S_IRWXU)


def test_a_foreign_pickle_is_one_line_in_a_real_process(tmp_path, monkeypatch):
    """In a process of its own nothing captures warnings: torch's about the pickle must not show."""
    monkeypatch.chdir(tmp_path)
    evil = _evil_pickle(tmp_path / "evil.pt")
    result = run_module("supernet.train", _argv({**BASE, "--out": tmp_path / "n.pt", "--resume": evil}), cwd=tmp_path)
    line = check_one_line(result.returncode, result.stderr)
    assert "not a readable supernet checkpoint" in line
    assert not (tmp_path / "evil-pickle-ran").exists() and not (tmp_path / "n.pt").exists()
