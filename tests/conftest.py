"""Test-wide settings.

One intra-op thread per test process: `make test` runs two pytest workers on two cores, and
OpenMP threads that outnumber free cores spin at barriers (a backward pass then takes minutes).
Traced layer costs are stored in a folder of the test run's own, not in the user's cache.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "1")
if "LATNAS_CACHE" not in os.environ:  # made once by the controller (xdist workers inherit it), removed when it exits
    os.environ["LATNAS_CACHE"] = tempfile.mkdtemp(prefix="latnas-test-cache-")
    atexit.register(shutil.rmtree, os.environ["LATNAS_CACHE"], True)

import torch  # noqa: E402  (after the environment is set)

torch.set_num_threads(1)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray (2 CPUs, plus one unit of each device resource) for the whole test session."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, resources={"ort-cpu": 2, "torch-cpu": 2}, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
