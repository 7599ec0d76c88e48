"""Standalone training of one architecture: the recipe, resuming, refusing another run's checkpoint."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from search_spaces import get_space
from supernet.data import load_data, stratified_subset
from supernet.checkpoint import DIGEST_KEY, CheckpointError
from supernet.standalone import StandaloneRecipe, train_standalone
from supernet.training import TrainingDiverged

from .conftest import flip_tensor_bytes

RECIPE = StandaloneRecipe(epochs=2, batch_size=16, train_images=40, val_images=10, warmup_epochs=0.5)


@pytest.fixture(scope="module")
def bundle():
    return load_data("synthetic:60", 32)


def test_training_learns_and_reports_every_held_out_split(bundle, tmp_path):
    arch = get_space("edgevit").smallest()
    result = train_standalone(arch, bundle, RECIPE, tmp_path / "n.pt", progress=False)
    assert set(result.accuracy) == {"val"} and 0 <= result.accuracy["val"] <= 1
    assert result.epochs == 2 and result.train_images == 40 and len(result.history) == 2
    assert result.arch.resolution == 32 and result.arch.num_classes == bundle.num_classes
    again = train_standalone(arch, bundle, RECIPE, tmp_path / "n.pt", progress=False)  # finished: reused
    assert again.accuracy == result.accuracy and again.history == result.history


def test_a_killed_run_resumes_to_the_uninterrupted_result(bundle, tmp_path, monkeypatch):
    import supernet.standalone as standalone

    arch = get_space("edgevit").smallest()
    straight = train_standalone(arch, bundle, RECIPE, tmp_path / "straight.pt", progress=False)
    measure, calls = standalone.accuracy, []

    def killed_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # epoch 2 trained, not yet saved: the kill loses it
            raise KeyboardInterrupt
        return measure(*args, **kwargs)

    monkeypatch.setattr(standalone, "accuracy", killed_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train_standalone(arch, bundle, RECIPE, tmp_path / "killed.pt", progress=False)
    assert torch.load(tmp_path / "killed.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(standalone, "accuracy", measure)
    resumed = train_standalone(arch, bundle, RECIPE, tmp_path / "killed.pt", progress=False)
    assert resumed.history == straight.history and resumed.accuracy == straight.accuracy


def test_a_checkpoint_of_another_architecture_or_recipe_is_refused(bundle, tmp_path):
    space = get_space("edgevit")
    train_standalone(space.smallest(), bundle, RECIPE, tmp_path / "n.pt", progress=False)
    with pytest.raises(ValueError, match="another architecture, recipe or data"):
        train_standalone(space.reference("xxs"), bundle, RECIPE, tmp_path / "n.pt", progress=False)
    with pytest.raises(ValueError, match="another architecture, recipe or data"):
        train_standalone(space.smallest(), bundle, dataclasses.replace(RECIPE, lr=1e-3), tmp_path / "n.pt", progress=False)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable standalone checkpoint"):
        train_standalone(space.smallest(), bundle, RECIPE, tmp_path / "junk.pt", progress=False)


def test_inherited_weights_start_the_training_and_are_part_of_its_identity(bundle, tmp_path):
    from search_spaces import build_model

    arch = dataclasses.replace(get_space("edgevit").smallest(), resolution=32, num_classes=bundle.num_classes)
    torch.manual_seed(123)
    inherited = build_model(arch).state_dict()
    one_step = dataclasses.replace(RECIPE, epochs=1, train_images=16, warmup_epochs=0.0, lr=1e-6)
    fine_tuned = train_standalone(arch, bundle, one_step, tmp_path / "inherited.pt", progress=False,
                                  initial_weights=inherited, splits=())
    scratch = train_standalone(arch, bundle, one_step, tmp_path / "scratch.pt", progress=False, splits=())
    assert fine_tuned.accuracy == {} and scratch.accuracy == {}
    weights = torch.load(tmp_path / "inherited.pt", weights_only=True)["model"]
    name = next(key for key, value in inherited.items() if value.is_floating_point() and value.dim() > 1)
    # one step at lr 1e-6 leaves the inherited weights where they were, not where a fresh start puts them
    assert torch.allclose(weights[name], inherited[name], atol=1e-4)
    assert not torch.allclose(torch.load(tmp_path / "scratch.pt", weights_only=True)["model"][name], inherited[name])
    with pytest.raises(ValueError, match="another architecture, recipe or data"):  # other starting weights
        train_standalone(arch, bundle, one_step, tmp_path / "inherited.pt", progress=False, splits=())
    reused = train_standalone(arch, bundle, one_step, tmp_path / "inherited.pt", progress=False,
                              initial_weights=inherited, splits=("val",))
    assert set(reused.accuracy) == {"val"} and reused.history == fine_tuned.history
    wrong = {key: value for key, value in inherited.items() if key != name}
    with pytest.raises(ValueError, match="initial_weights: do not fit this network"):
        train_standalone(arch, bundle, one_step, tmp_path / "wrong.pt", progress=False, initial_weights=wrong)
    with pytest.raises(ValueError, match=r"splits: \['tset'\] not in the data's splits"):
        train_standalone(arch, bundle, one_step, tmp_path / "other.pt", progress=False, splits=("tset",))
    assert not (tmp_path / "wrong.pt").exists() and not (tmp_path / "other.pt").exists()


@pytest.mark.parametrize("field, value", [("epochs", 0), ("lr", float("nan")), ("train_images", -1), ("seed", -1)])
def test_bad_recipes_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        StandaloneRecipe(**{field: value})


def test_stratified_subsets_are_fixed_and_balanced(bundle):
    subset = stratified_subset(bundle.train, 30, seed=0)
    assert len(subset) == 30 and subset.indices == stratified_subset(bundle.train, 30, seed=0).indices
    labels = [int(bundle.train.labels[i]) for i in subset.indices]
    assert max(labels.count(c) for c in set(labels)) - min(labels.count(c) for c in set(labels)) <= 1
    assert len(stratified_subset(bundle.train, 0)) == len(bundle.train)


def test_a_damaged_checkpoint_is_refused_and_a_legacy_one_resumes(bundle, tmp_path):
    arch = get_space("edgevit").smallest()
    one_epoch = dataclasses.replace(RECIPE, epochs=1)
    train_standalone(arch, bundle, one_epoch, tmp_path / "n.pt", progress=False)
    flipped = flip_tensor_bytes(tmp_path / "n.pt", tmp_path / "flipped.pt")
    with pytest.raises(CheckpointError, match="does not match its sha256 digest"):
        train_standalone(arch, bundle, one_epoch, flipped, progress=False)
    payload = torch.load(tmp_path / "n.pt", weights_only=True)
    del payload[DIGEST_KEY]  # as written before checkpoints carried a digest
    torch.save(payload, tmp_path / "legacy.pt")
    assert train_standalone(arch, bundle, one_epoch, tmp_path / "legacy.pt", progress=False).epochs == 1
    next(iter(payload["model"].values())).fill_(float("nan"))
    torch.save(payload, tmp_path / "legacy.pt")
    with pytest.raises(CheckpointError, match="holds NaN or inf"):
        train_standalone(arch, bundle, one_epoch, tmp_path / "legacy.pt", progress=False)


def test_a_diverging_network_stops_and_keeps_its_last_good_epoch(bundle, tmp_path, monkeypatch):
    import supernet.standalone as standalone

    arch = get_space("edgevit").smallest()
    loss, calls = standalone.F.cross_entropy, []

    def infinite_in_epoch_two(*args, **kwargs):
        calls.append(1)
        value = loss(*args, **kwargs)
        return value * float("inf") if len(calls) > 3 else value  # 40 images in batches of 16: 3 steps an epoch

    monkeypatch.setattr(standalone.F, "cross_entropy", infinite_in_epoch_two)
    with pytest.raises(TrainingDiverged, match=r"n1 in epoch 2, step 1: the loss is inf; .*n\.pt keeps epoch 1"):
        train_standalone(arch, bundle, RECIPE, tmp_path / "n.pt", progress=False, label="n1")
    assert torch.load(tmp_path / "n.pt", weights_only=True)["epoch"] == 1
