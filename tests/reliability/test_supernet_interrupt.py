"""SIGKILL during `python -m supernet.train`: the checkpoint the run was continuing stays intact and
loadable, nothing of the killed run keeps running, and the next run removes the temporaries a killed
writer leaves behind (`.NAME.<pid>-XXXX.tmp` beside each output)."""

from __future__ import annotations

import os
import threading

from supernet import Supernet, read_checkpoint
from supernet.data import load_data
from supernet.train import PROG, build_parser, config_from_args, main
from supernet.training import Trainer, metrics_path
from tests.cli_support import invoke
from tests.reliability.harness import sigkill_when, start_module

# EdgeNeXt (the fewest weights) at 32 px; 400 images in batches of 20 make an epoch of 20 steps, so
# a kill at the first step lands long before the epoch's checkpoint is written.
LONG_RUN = ["--space", "edgenext", "--data", "synthetic:400", "--mode", "sandwich", "--epochs", "1",
            "--batch-size", "20", "--resolution", "32", "--num-random", "0"]
SHORT_RUN = [*LONG_RUN[:2], "--data", "synthetic:20", *LONG_RUN[4:]]


def _stderr_reader(process) -> bytearray:
    """Everything `process` writes to stderr so far, collected by a thread (tqdm writes no newlines)."""
    seen = bytearray()

    def read() -> None:
        descriptor = process.stderr.fileno()
        while chunk := os.read(descriptor, 4096):
            seen.extend(chunk)

    threading.Thread(target=read, daemon=True).start()
    return seen


def test_sigkill_while_training_keeps_the_checkpoint_and_the_next_run_cleans_up(tmp_path, capsys):
    out = tmp_path / "run.pt"
    argv = [*LONG_RUN, "--out", str(out), "--resume", str(out)]  # the usual resume flow: continue in place
    config = config_from_args(build_parser().parse_args(argv))
    previous = Trainer(config, load_data(config.data, config.resolution, config.seed), out, progress=False)
    previous.save(out)  # what an earlier run of this config left: its checkpoint before the first step
    before = out.read_bytes()

    process = start_module("supernet.train", argv, cwd=tmp_path)
    stderr = _stderr_reader(process)
    sigkill_when(process, lambda: b"loss=" in stderr, "the first training step")

    assert out.read_bytes() == before  # not replaced, not torn
    assert read_checkpoint(out)["extra"]["training"]["epoch"] == 0
    assert Supernet.load(out, space="edgenext").resolution == 32

    # What a run killed while writing leaves beside its outputs (its process id is now free).
    stale = [tmp_path / f".{out.name}.{process.pid}-k1lled.tmp", tmp_path / f".{metrics_path(out).name}.{process.pid}-x.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    code, _, err = invoke(main, PROG, [*SHORT_RUN, "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    assert not any(path.exists() for path in stale)
    assert not [path.name for path in tmp_path.iterdir() if path.name.endswith(".tmp")]
    assert read_checkpoint(out)["extra"]["training"]["epoch"] == 1
    assert metrics_path(out).read_text().count("\n") == 1
