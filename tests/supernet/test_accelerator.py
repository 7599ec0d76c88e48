"""Training and scoring on a CUDA device (`Trainer(device=...)`, `train_standalone(device=...)`, a
supernet moved with `.to("cuda")` under `SupernetEvaluator`): the same results as on the CPU up to
floating-point order, and checkpoints that resume on either device. Skipped without CUDA (the
suite's machines have none; the device checks run these where one is lent)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader

from nas.evaluators import SupernetEvaluator
from supernet.data import load_data
from supernet.standalone import StandaloneRecipe, train_standalone
from supernet.training import TrainConfig, Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DATA = "synthetic:96"


@pytest.mark.parametrize("space, mode", [("efficientformer_v2", "sandwich"), ("edgenext", "gumbel")])
def test_a_run_killed_on_cuda_resumes_on_the_cpu(tmp_path, space, mode):
    config = TrainConfig(space=space, data=DATA, mode=mode, epochs=2, batch_size=32, resolution=32, val_random=1,
                         warmup_epochs=0.5)
    bundle = load_data(DATA, 32, seed=0)
    on_gpu = Trainer(config, bundle, tmp_path / "net.pt", progress=False, device="cuda")
    assert on_gpu.supernet.device.type == "cuda"
    with pytest.raises(KeyboardInterrupt):
        on_gpu.run(stop_after_steps=on_gpu.steps_per_epoch + 1)  # dies inside epoch 2
    on_cpu = Trainer(config, bundle, tmp_path / "net.pt", progress=False)
    on_cpu.load(tmp_path / "net.pt")
    assert on_cpu.epoch == 1
    on_cpu.run()
    assert [epoch["epoch"] for epoch in on_cpu.history] == [1, 2]
    assert all(math.isfinite(epoch["loss"]) for epoch in on_cpu.history)


def test_a_standalone_network_trained_on_cuda_is_reused_on_the_cpu_with_its_accuracy(tmp_path):
    from search_spaces import get_space

    bundle = load_data(DATA, 32, seed=0)
    recipe = StandaloneRecipe(epochs=1, batch_size=32, warmup_epochs=0.3)
    arch = get_space("efficientformer_v2").reference("s0")
    on_gpu = train_standalone(arch, bundle, recipe, tmp_path / "s0.pt", progress=False, device="cuda")
    on_cpu = train_standalone(arch, bundle, recipe, tmp_path / "s0.pt", progress=False)  # the finished checkpoint
    assert on_cpu.epochs == on_gpu.epochs == 1 and on_cpu.history == on_gpu.history
    for split, value in on_gpu.accuracy.items():  # the same weights; kernels may differ in the last bits
        assert abs(on_cpu.accuracy[split] - value) <= 1 / len(bundle.split(split)) + 1e-9


@pytest.mark.parametrize("recalibrate", [0, 2])
def test_the_supernet_scores_on_cuda_as_on_the_cpu(tmp_path, recalibrate):
    config = TrainConfig(space="efficientformer_v2", data=DATA, mode="sandwich", epochs=1, batch_size=32,
                         resolution=32, val_random=1, warmup_epochs=0.5)
    bundle = load_data(DATA, 32, seed=0)
    trainer = Trainer(config, bundle, tmp_path / "net.pt", progress=False)
    trainer.run()
    space = trainer.space
    archs = [space.largest(), space.smallest(), space.reference("s0")]

    def scores(net) -> list[float]:
        evaluator = SupernetEvaluator(net, DataLoader(bundle.val, batch_size=16), recalibrate=recalibrate,
                                      calibration_loader=DataLoader(bundle.train, batch_size=16))
        return [evaluator.score(arch) for arch in archs]

    on_cpu = scores(trainer.supernet)
    on_gpu = scores(trainer.supernet.to("cuda"))
    one_image = 100.0 / len(bundle.val)
    assert all(abs(a - b) <= one_image + 1e-9 for a, b in zip(on_cpu, on_gpu)), (on_cpu, on_gpu)
