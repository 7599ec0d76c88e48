"""The ranking study's runner (`experiments/supernet_ranking/run.py`) end to end on tiny
Fashion-MNIST-shaped files: every phase writes where `results` says, the evaluation correlates
what was trained, and a bad `accelerator` is one line and exit 2 before any work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from experiments.study import exit_code_of
from experiments.supernet_ranking import run as study
from tests.supernet.test_data import make_fashion_mnist


def _tiny_config(tmp_path) -> dict:
    config = study.load_config(study.HERE_CONFIG)
    config.update(data=f"fashion-mnist:{make_fashion_mnist(tmp_path / 'fm', train_per_class=6, test_per_class=2)}",
                  resolution=32,
                  checkpoints=str(tmp_path / "checkpoints"), results=str(tmp_path / "results"))
    config["selection"].update(strata=2, pool=20, always=["largest", "smallest"])
    config["supernet"].update(epochs=1, batch_size=25, warmup_epochs=0.5, train_images=0, val_images=0)
    config["standalone"].update(epochs=1, batch_size=25, warmup_epochs=0.3, train_images=0, val_images=0,
                                budget_check={"networks": 3, "epochs": 2}, seed_check={"networks": 2, "seed": 1})
    config["evaluation"].update(val_images=10, recalibration_batches=[0, 2], recalibration_batch_size=5,
                                bootstrap=20, attempts={})
    return config


def report_seeds(results) -> dict:
    return json.loads((results / "results.json").read_text())["seed_check"]


def _write(tmp_path, config: dict):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), "utf-8")
    return path


def test_every_phase_writes_to_the_results_folder_and_evaluate_correlates_them(tmp_path, capsys):
    config = _tiny_config(tmp_path)
    path = _write(tmp_path, config)
    for phase in ("select", "supernet", "standalone", "seeds", "evaluate"):  # budget trains like standalone
        assert exit_code_of(lambda phase=phase: study.main(["--config", str(path), "--phase", phase])) == 0
    results = tmp_path / "results"
    networks = json.loads((results / "networks.json").read_text())["networks"]
    assert [n["name"] for n in networks[:2]] == ["largest", "smallest"] and len(networks) == 4
    assert sorted(p.stem for p in (results / "standalone").glob("*.json")) == [n["id"] for n in networks]
    assert len(list((results / "seeds").glob("*.json"))) == 2
    assert len(report_seeds(results)["networks"]) == 2
    report = json.loads((results / "results.json").read_text())
    assert report["complete"] and report["networks"] == 4 and report["machine"]["accelerator"] == "cpu"
    assert set(report["correlations_with_standalone_test_accuracy"]) == {
        "supernet_shared_bn", "supernet_bn2", "synflow", "params", "macs", "latency"}
    assert json.loads((results / "supernet_training.json").read_text())["accelerator"] == "cpu"
    assert (results / "ranking.csv").is_file() and (results / "ranking.png").is_file()
    assert not any(study.HERE.joinpath(name).stat().st_mtime_ns > path.stat().st_mtime_ns
                   for name in ("results.json", "networks.json"))  # the committed study was not touched

    # an attempt with no changes correlates exactly as `evaluate` did; one with changes is scored anew
    config["evaluation"]["attempts"] = {"unchanged": {}, "fewer_images": {"val_images": 5, "recalibration_batches": [0]}}
    path = _write(tmp_path, config)
    assert exit_code_of(lambda: study.main(["--config", str(path), "--phase", "attempts"])) == 0
    attempts = json.loads((results / "attempts.json").read_text())
    assert set(attempts) == {"unchanged", "fewer_images"} and attempts["unchanged"]["networks"] == 4
    for split in ("val", "test"):
        key = f"correlations_with_standalone_{split}_accuracy"
        assert attempts["unchanged"]["handlings"]["supernet_bn2"][key] == report[key]["supernet_bn2"]
    assert set(attempts["fewer_images"]["handlings"]) == {"supernet_shared_bn"}
    assert attempts["unchanged"]["supernet_weights_sha256"] == study.supernet_weights_sha256(config)
    assert (results / "attempts.png").is_file()  # one panel per attempt and BN handling

    # an attempt that changes the supernet's training trains its own, beside the study's, and scores it
    config["evaluation"]["attempts"] = {"labels": {"supernet": {"student_target": "labels"}, "recalibration_batches": [0]}}
    path = _write(tmp_path, config)
    assert exit_code_of(lambda: study.main(["--config", str(path), "--phase", "attempts"])) == 0
    labels = json.loads((results / "attempts.json").read_text())["labels"]
    trained = json.loads((results / "attempts" / "labels_supernet_training.json").read_text())
    assert trained["config"]["student_target"] == "labels" and len(trained["epochs"]) == 1
    assert (tmp_path / "checkpoints" / "attempts" / "labels" / "supernet.pt").is_file()
    assert labels["supernet_weights_sha256"] != study.supernet_weights_sha256(config)
    assert set(labels["handlings"]) == {"supernet_shared_bn"} and "supernet" not in labels["settings"]
    # its supernet gone from the host (not committed), a rerun keeps the record and trains nothing
    (tmp_path / "checkpoints" / "attempts" / "labels" / "supernet.pt").unlink()
    assert exit_code_of(lambda: study.main(["--config", str(path), "--phase", "attempts"])) == 0
    assert json.loads((results / "attempts.json").read_text())["labels"] == labels
    assert not (tmp_path / "checkpoints" / "attempts" / "labels" / "supernet.pt").exists()
    config["evaluation"]["attempts"] = {"bad": {"supernet": {"students": "labels"}}}
    path = _write(tmp_path, config)
    with pytest.raises(SystemExit, match=r"evaluation.attempts.bad.supernet: unknown setting\(s\) \['students'\]"):
        study.main(["--config", str(path), "--phase", "attempts"])
    config["evaluation"]["attempts"] = {"bad": {"supernet": {"student_target": "both"}}}
    path = _write(tmp_path, config)
    with pytest.raises(SystemExit, match=r"evaluation.attempts.bad.supernet.student_target: must be one of"):
        study.main(["--config", str(path), "--phase", "attempts"])

    # short training: each network a few steps from its supernet weights, or from scratch (the control),
    # a checkpoint each, scored on the evaluation's val images; `--attempt` runs one, merged into the file
    short = {"tuned": {"short_training": {"initial": "supernet", "steps": 1, "lr": 0.0005}},
             "scratch": {"short_training": {"initial": "scratch", "steps": 1, "lr": 0.0005}}}
    config["evaluation"]["attempts"] = short
    path = _write(tmp_path, config)
    with pytest.raises(SystemExit, match=r"--shard 1/2: splits a short_training attempt's networks; name one with --attempt"):
        study.main(["--config", str(path), "--phase", "attempts", "--shard", "1/2"])
    for part in ("1/2", "2/2"):  # two processes share the networks; neither records the attempt
        assert exit_code_of(lambda part=part: study.main(
            ["--config", str(path), "--phase", "attempts", "--attempt", "scratch", "--shard", part])) == 0
    assert "scratch" not in json.loads((results / "attempts.json").read_text())
    assert len(list((tmp_path / "checkpoints" / "attempts" / "scratch").glob("*.pt"))) == 4
    assert exit_code_of(lambda: study.main(["--config", str(path), "--phase", "attempts", "--attempt", "scratch"])) == 0
    done = json.loads((results / "attempts.json").read_text())
    assert "tuned" not in done and "labels" in done and set(done["scratch"]["handlings"]) == {"scratch_1_steps"}
    assert done["scratch"]["supernet_weights_sha256"] is None and done["scratch"]["networks"] == 4
    assert exit_code_of(lambda: study.main(["--config", str(path), "--phase", "attempts"])) == 0
    again = json.loads((results / "attempts.json").read_text())
    assert again["scratch"] == done["scratch"]  # finished: not rerun
    assert again["tuned"]["supernet_weights_sha256"] == study.supernet_weights_sha256(config)
    assert "spearman_rho_beyond_latency" in again["tuned"]["handlings"]["supernet_1_steps"]
    scores = again["tuned"]["handlings"]["supernet_1_steps"]["scores"]
    assert len(scores) == 4 and all(0 <= value <= 100 for value in scores.values())
    assert len(list((tmp_path / "checkpoints" / "attempts" / "tuned").glob("*.pt"))) == 4
    for attempt, message in [
            ({"short_training": {"initial": "supernet", "steps": 0, "lr": 0.0005}},
             r"evaluation.attempts.bad.short_training.steps: an integer in \[1, 10000\], got 0"),
            ({"short_training": {"initial": "teacher", "steps": 5, "lr": 0.0005}},
             r"evaluation.attempts.bad.short_training.initial: one of \['supernet', 'scratch'\], got 'teacher'"),
            ({"short_training": {"initial": "scratch", "steps": 5}},
             r"evaluation.attempts.bad.short_training: a mapping with exactly the keys \['initial', 'steps', 'lr'\]"),
            ({"short_training": {"initial": "scratch", "steps": 5, "lr": -1.0}},
             r"evaluation.attempts.bad.short_training.lr: ")]:
        config["evaluation"]["attempts"] = {"bad": attempt}
        path = _write(tmp_path, config)
        with pytest.raises(SystemExit, match=message):
            study.main(["--config", str(path), "--phase", "attempts"])
    with pytest.raises(SystemExit, match=r"--attempt: one of \['bad'\] \(evaluation.attempts\), got 'nope'"):
        study.main(["--config", str(path), "--phase", "attempts", "--attempt", "nope"])
    assert not (tmp_path / "checkpoints" / "attempts" / "bad").exists()
    committed = study.HERE / "attempts.json"
    assert not committed.exists() or committed.stat().st_mtime_ns < path.stat().st_mtime_ns


def test_beyond_latency_reads_what_a_predictor_knows_besides_size():
    latency = [0.5, 0.7, 1.0, 1.4, 2.0, 2.6]
    size = np.log(latency)
    other = np.asarray([0.3, -0.2, 0.5, -0.4, 0.1, 0.0])  # what decides accuracy besides size
    truth = (size + other).tolist()
    assert study.beyond_latency(truth, (3 * size + other).tolist(), latency) == pytest.approx(1.0)
    assert study.beyond_latency(truth, (2 * size - other).tolist(), latency) == pytest.approx(-1.0)
    assert study.beyond_latency(truth, (2 * size + 1).tolist(), latency) is None  # size and nothing else


@pytest.mark.parametrize(("value", "message"), [
    ("tpu", "accelerator: must be one of cpu, cuda, got 'tpu'"),
    pytest.param("cuda", "accelerator: cuda, but torch sees no CUDA device here (use cpu)",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_a_bad_accelerator_is_one_line_and_exit_2(tmp_path, capsys, value, message):
    config = _tiny_config(tmp_path)
    config["accelerator"] = value
    path = _write(tmp_path, config)
    assert exit_code_of(lambda: study.main(["--config", str(path), "--phase", "select"])) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"{path}: {message}"
    assert not (tmp_path / "results").exists()


def test_the_gpu_configuration_is_the_cpu_one_but_for_its_training_budget_and_places():
    cpu = study.load_settings(study.HERE_CONFIG, study.KEYS)
    gpu = study.load_settings(study.HERE / "config_gpu.yaml", study.KEYS)
    assert gpu["accelerator"] == "cuda" and gpu["results"] != cpu["results"] and gpu["checkpoints"] != cpu["checkpoints"]
    same = ("space", "data", "resolution", "num_classes", "device", "selection")
    assert {key: gpu[key] for key in same} == {key: cpu[key] for key in same}  # the same 25 networks
