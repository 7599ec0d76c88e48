"""Supernet overhead on CPU: an architecture run inside the supernet vs its extracted static network.

What it measures, for the `efficientformer_v2` supernet at resolution 64 with 10 classes, batch 32,
eval mode, under `torch.no_grad()`, for three architectures:

- `largest`: `space.largest()`;
- `median`: 101 architectures drawn with `space.sample(numpy.random.default_rng(0))` (default
  resolution, then `net.fit`), ordered by `search_spaces.count_params` (ties by draw order), the
  51st (index 50);
- `smallest`: `space.smallest()`.

Each is put at 64 px / 10 classes with `net.fit(arch)`, activated with `net.set_arch(arch)` and
extracted with `net.extract(arch)` (same weights, plain torch modules); the outputs of both sides
on the benchmark input are compared (max abs difference is recorded).

Latency: `torch.set_num_threads(--threads)` (default: every core), `--warmup` forwards per side,
then `--repeats` timed forwards per side, interleaved in pairs whose order alternates (A B, B A,
A B, ...) so that drift and background load hit both sides alike; `time.perf_counter` around one
forward. Reported per side: median, p10, p90, min in ms; per case: the ratio of medians
supernet / static (the number to quote) and whether it is at most `target_ratio` (1.25). The
machine's load while timing (CPU time of other processes, from /proc/stat minus our own CPU
time) is recorded, because on a shared machine it dominates the noise.

Peak memory: each side of each case runs in a fresh subprocess (this script with
`--memory-probe`) at the same thread count, with glibc's malloc thresholds fixed
(`MALLOC_MMAP_THRESHOLD_` = `MALLOC_TRIM_THRESHOLD_` = 128 KiB) so that every tensor of 128 KiB or
more is its own mapping, returned to the kernel when freed: resident memory then follows live
tensors rather than a cached heap. The child builds the model (supernet: `Supernet.from_space` +
`set_arch`; static: `build_model(arch)` loaded with the extracted state dict the parent wrote),
and around each forward resets the kernel's resident-set high-water mark (`5` into
`/proc/self/clear_refs`) and reads VmHWM from `/proc/self/status` afterwards. Recorded (MiB):
`baseline_rss` (VmRSS before building: interpreter, torch, the input), `model_rss` (VmRSS after
building minus before), `first_forward_extra_rss` (VmHWM of the first forward minus VmRSS before
it; includes oneDNN primitive creation), `forward_extra_rss` (the same for warm forwards, max of
3: activations, workspaces and, for the supernet, per-call weight copies), `forward_peak_rss`
(VmHWM of a warm forward: the whole process at its peak) and `build_peak_rss` (VmHWM after
building, before the first reset: the process peak through imports and construction; not
`ru_maxrss`, which Linux carries over from the parent across `execve`). Parameter counts: supernet total (every shared weight,
every switchable BatchNorm, α), the static network's, and `count_params(arch)`.

Run (a few minutes on 2 cores):

    python benchmarks/supernet_overhead.py [--threads N] [--repeats N] [--warmup N] [--out PATH] [--profile]

`--profile` adds, per case and side, the top ops by self CPU time of one `torch.profiler` forward.
Progress goes to stderr; the JSON (default `benchmarks/results/supernet_overhead.json`) is
written atomically.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

SPACE = "efficientformer_v2"
RESOLUTION = 64
NUM_CLASSES = 10
BATCH = 32
TARGET_RATIO = 1.25
MEDIAN_SAMPLES = 101
MEDIAN_SEED = 0
WEIGHT_SEED = 0
INPUT_SEED = 1
MEMORY_PROBE_FORWARDS = 3
CASES = ("largest", "median", "smallest")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "supernet_overhead.json"
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- architectures ---------------------------------------------------------------------------------
def pick_architectures(space, fit) -> tuple[dict[str, Any], dict[str, Any]]:
    """The three cases (fitted to the benchmark resolution and classes) and how the median was picked."""
    from search_spaces import count_params

    rng = np.random.default_rng(MEDIAN_SEED)
    samples = [fit(space.sample(rng)) for _ in range(MEDIAN_SAMPLES)]
    params = [count_params(arch) for arch in samples]
    order = sorted(range(MEDIAN_SAMPLES), key=lambda i: (params[i], i))
    median_index = order[MEDIAN_SAMPLES // 2]
    archs = {"largest": fit(space.largest()), "median": samples[median_index], "smallest": fit(space.smallest())}
    how = {
        "rule": (
            f"{MEDIAN_SAMPLES} architectures from space.sample(numpy.random.default_rng({MEDIAN_SEED})) at the space's"
            f" default resolution, each passed through net.fit (resolution {RESOLUTION}, {NUM_CLASSES} classes);"
            " ordered by search_spaces.count_params, ties by draw order; the median is the one at index"
            f" {MEDIAN_SAMPLES // 2}"
        ),
        "draw_index": median_index,
        "sample_params": {"min": min(params), "median": params[median_index], "max": max(params)},
    }
    return archs, how


# -- machine ---------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes of the machine have spent busy (non-idle, non-iowait), from /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    guest = sum(fields[8:10]) if len(fields) > 9 else 0  # already counted in user / nice
    return (sum(fields) - idle - guest) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class LoadMeter:
    """Average number of cores kept busy by *other* processes between `start` and `stop`."""

    def start(self) -> None:
        self.wall, self.busy, self.own = time.perf_counter(), machine_busy_seconds(), own_cpu_seconds()

    def stop(self) -> dict[str, float | None]:
        wall = time.perf_counter() - self.wall
        busy = machine_busy_seconds()
        own = own_cpu_seconds() - self.own
        if busy is None or self.busy is None:
            return {"wall_s": round(wall, 2), "own_cores": round(own / wall, 2), "other_cores": None}
        return {
            "wall_s": round(wall, 2),
            "own_cores": round(own / wall, 2),
            "other_cores": round(max(0.0, (busy - self.busy) - own) / wall, 2),
        }


# -- latency ---------------------------------------------------------------------------------------
def stats_ms(seconds: list[float]) -> dict[str, float]:
    values = np.asarray(seconds) * 1000.0
    return {
        "median_ms": round(float(np.median(values)), 3),
        "p10_ms": round(float(np.percentile(values, 10)), 3),
        "p90_ms": round(float(np.percentile(values, 90)), 3),
        "min_ms": round(float(values.min()), 3),
        "n": int(values.size),
    }


def time_pair(supernet, static, images, warmup: int, repeats: int, label: str) -> dict[str, Any]:
    """Interleaved timing; pairs alternate their order (A B, B A, ...)."""
    from tqdm import tqdm

    sides = {"supernet": supernet, "static": static}
    with torch.no_grad():
        for _ in range(warmup):
            for module in sides.values():
                module(images)
        times: dict[str, list[float]] = {name: [] for name in sides}
        meter = LoadMeter()
        meter.start()
        for repeat in tqdm(range(repeats), desc=f"time {label}", file=sys.stderr, leave=False):
            order = ("supernet", "static") if repeat % 2 == 0 else ("static", "supernet")
            for name in order:
                start = time.perf_counter()
                sides[name](images)
                times[name].append(time.perf_counter() - start)
        load = meter.stop()
    result = {name: stats_ms(values) for name, values in times.items()}
    result["load"] = load
    return result


def profile_top_ops(module, images, rows: int = 12) -> list[dict[str, Any]]:
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        module(images)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            module(images)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [
        {"op": e.key, "self_ms": round(e.self_cpu_time_total / 1000.0, 3), "calls": e.count}
        for e in events[:rows]
    ]


# -- memory ----------------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as stream:
            stream.write("5")
        return True
    except OSError:
        return False


def memory_probe(side: str, arch_json: str, state_path: str | None) -> dict[str, Any]:
    """Run in a fresh process: build one side, forward, report resident-memory figures (MiB)."""
    from search_spaces import Architecture, build_model
    from supernet import Supernet

    arch = Architecture.from_dict(json.loads(arch_json))
    torch.manual_seed(INPUT_SEED)
    images = torch.randn(BATCH, 3, RESOLUTION, RESOLUTION)
    gc.collect()
    before_build = _status_kib("VmRSS")
    torch.manual_seed(WEIGHT_SEED)
    if side == "supernet":
        model = Supernet.from_space(SPACE, NUM_CLASSES, RESOLUTION)
        model.set_arch(arch)
    else:
        model = build_model(arch)
        model.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True))
    model.eval()
    gc.collect()
    after_build = _status_kib("VmRSS")
    build_peak = _status_kib("VmHWM")  # since exec: imports and construction
    with torch.no_grad():
        reset_ok = _reset_peak()
        before = _status_kib("VmRSS")
        model(images)  # the first forward also creates oneDNN primitives and caches
        first_extra = _status_kib("VmHWM") - before
        peaks, extras = [], []
        for _ in range(MEMORY_PROBE_FORWARDS):
            gc.collect()
            reset_ok = _reset_peak() and reset_ok
            before = _status_kib("VmRSS")
            model(images)
            peak = _status_kib("VmHWM")
            peaks.append(peak)
            extras.append(peak - before)
    return {
        "baseline_rss_mib": round(before_build / 1024, 1),
        "model_rss_mib": round((after_build - before_build) / 1024, 1),
        "first_forward_extra_rss_mib": round(first_extra / 1024, 1) if reset_ok else None,
        "forward_extra_rss_mib": round(max(extras) / 1024, 1) if reset_ok else None,
        "forward_peak_rss_mib": round(max(peaks) / 1024, 1),
        "build_peak_rss_mib": round(build_peak / 1024, 1),
        "peak_reset": "clear_refs" if reset_ok else "unavailable: extras are None, forward_peak_rss_mib is the process peak",
    }


def run_memory_probe(side: str, arch, state_path: Path | None, threads: int) -> dict[str, Any]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--memory-probe",
        side,
        "--arch-json",
        json.dumps(arch.to_dict()),
        "--threads",
        str(threads),
    ]
    if state_path is not None:
        command += ["--state", str(state_path)]
    # fixed malloc thresholds: every block of 128 KiB or more is its own mapping, returned to the kernel when
    # freed, so resident memory follows live tensors instead of glibc's grown, cached heap
    environment = {**os.environ, **MALLOC_ENV}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=environment)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe ({side}) failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- main ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch intra-op threads (default: all cores)")
    parser.add_argument("--repeats", type=int, default=30, help="timed forwards per side (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed forwards per side first (default 5)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    parser.add_argument("--profile", action="store_true", help="add per-op self CPU time of one forward per side")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--memory-probe", choices=("supernet", "static"), help=argparse.SUPPRESS)
    parser.add_argument("--arch-json", help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--threads and --repeats must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.arch_json, args.state)))
        return 0

    from search_spaces import count_params, get_space
    from search_spaces.files import write_text_atomic
    from supernet import Supernet

    started = time.time()
    load_start = os.getloadavg()
    idle_probe = LoadMeter()
    idle_probe.start()
    time.sleep(1.0)
    before = idle_probe.stop()
    if before["other_cores"] is not None and before["other_cores"] > 0.2:
        log(f"warning: other processes keep {before['other_cores']} cores busy; timings will be noisy")
    space = get_space(SPACE)
    log(f"building the {SPACE} supernet ({RESOLUTION}px, {NUM_CLASSES} classes)")
    torch.manual_seed(WEIGHT_SEED)
    net = Supernet.from_space(space, NUM_CLASSES, RESOLUTION).eval()
    supernet_params = sum(p.numel() for p in net.parameters())
    alpha_params = sum(p.numel() for p in net.arch_parameters())
    archs, median_rule = pick_architectures(space, net.fit)
    torch.manual_seed(INPUT_SEED)
    images = torch.randn(BATCH, 3, RESOLUTION, RESOLUTION)

    cases = []
    with tempfile.TemporaryDirectory(prefix="supernet_overhead.") as scratch:
        for name in args.cases:
            arch = archs[name]
            net.set_arch(arch)
            static = net.extract(arch).eval()
            with torch.no_grad():
                difference = float((net(images) - static(images)).abs().max())
            log(f"{name}: {count_params(arch):,} params, max |supernet - static| = {difference:.2e}")
            timing = time_pair(net, static, images, args.warmup, args.repeats, name)
            ratio = timing["supernet"]["median_ms"] / timing["static"]["median_ms"]
            state_path = Path(scratch) / f"{name}.pt"
            torch.save(static.state_dict(), state_path)
            log(f"{name}: ratio {ratio:.3f}; measuring peak memory in fresh processes")
            memory = {
                "supernet": run_memory_probe("supernet", arch, None, args.threads),
                "static": run_memory_probe("static", arch, state_path, args.threads),
            }
            case = {
                "case": name,
                "arch": arch.to_dict(),
                "params": {
                    "count_params": count_params(arch),
                    "static": sum(p.numel() for p in static.parameters()),
                    "supernet_total": supernet_params,
                },
                "max_abs_output_difference": difference,
                "supernet": {**timing["supernet"], "memory": memory["supernet"]},
                "static": {**timing["static"], "memory": memory["static"]},
                "ratio_of_medians": round(ratio, 4),
                "target_ratio": TARGET_RATIO,
                "meets_target": bool(ratio <= TARGET_RATIO),
                "load_while_timing": timing["load"],
            }
            if args.profile:
                case["profile_top_ops"] = {"supernet": profile_top_ops(net, images), "static": profile_top_ops(static, images)}
            cases.append(case)
            del static
            gc.collect()

    result = {
        "benchmark": "supernet_overhead",
        "what": (
            "CPU forward latency of an architecture run inside the supernet (set_arch) vs its extracted static"
            " network (extract), eval mode, torch.no_grad(); ratio = median supernet / median static"
        ),
        "space": SPACE,
        "resolution": RESOLUTION,
        "num_classes": NUM_CLASSES,
        "batch": BATCH,
        "target_ratio": TARGET_RATIO,
        "meets_target_all": all(case["meets_target"] for case in cases),
        "median_arch_rule": median_rule,
        "timing_method": (
            f"{args.warmup} warm-up forwards per side, then {args.repeats} timed forwards per side interleaved in"
            " pairs of alternating order (A B, B A, ...), time.perf_counter around each forward; median/p10/p90/min"
        ),
        "memory_method": (
            "fresh subprocess per side and case at the same thread count, glibc MALLOC_MMAP_THRESHOLD_ ="
            " MALLOC_TRIM_THRESHOLD_ = 131072 so freed tensors leave the resident set; baseline_rss = VmRSS before"
            " building; model_rss = VmRSS after building minus before; around each forward the RSS high-water mark"
            " is reset (/proc/self/clear_refs = 5) and VmHWM read after it: first_forward_extra_rss = VmHWM - VmRSS"
            " before the first forward, forward_extra_rss = the same, max of 3 warm forwards, forward_peak_rss ="
            " max VmHWM of the warm forwards (whole process); build_peak_rss = VmHWM after building, before"
            " any reset (imports and construction)"
        ),
        "params_note": "supernet_total counts every parameter of the supernet (shared weights, every switchable BN, "
        f"and {alpha_params} architecture logits alpha)",
        "cases": cases,
        "environment": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "cpu_count": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)),
            "cpu": cpu_model(),
            "processor": platform.processor(),
            "platform": platform.platform(),
            "mkldnn": torch.backends.mkldnn.is_available(),
            "other_cores_before_start": before["other_cores"],
            "loadavg_start": [round(v, 2) for v in load_start],
            "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    }
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")

    log(f"\n{'case':<9} {'supernet ms':>12} {'static ms':>10} {'ratio':>6} {'ok':>3}  {'peak RSS MiB sup/sta':>20}  {'fwd extra MiB sup/sta':>21}  {'other cores':>11}")
    for case in cases:
        sup, sta = case["supernet"], case["static"]
        log(
            f"{case['case']:<9} {sup['median_ms']:>12.1f} {sta['median_ms']:>10.1f} {case['ratio_of_medians']:>6.3f}"
            f" {'yes' if case['meets_target'] else 'NO':>3}"
            f"  {sup['memory']['forward_peak_rss_mib']:>9.0f}/{sta['memory']['forward_peak_rss_mib']:<10.0f}"
            f"  {sup['memory']['forward_extra_rss_mib']!s:>10}/{sta['memory']['forward_extra_rss_mib']!s:<10}"
            f"  {case['load_while_timing']['other_cores']!s:>11}"
        )
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
