"""Found architectures next to EfficientFormerV2 S0/S1/S2/L, all priced by the same iPhone 12 table.

    python benchmarks/search_vs_references.py [--targets 0.9,1.1,1.6,2.7] [--objective mes]

For each target, runs the default search (`nas.api.run_search`: greedy, MES objective, SynFlow
proxy, shipped `iphone12` table, as `python -m nas.search` does) and reports predicted latency, params, MACs, MES and proxy score of the
found architecture; the same numbers for the four references (priced by that table, scored by
the same proxy). Writes `benchmarks/results/search_vs_references.json` and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search_spaces import Architecture, count_macs, count_params, get_space  # noqa: E402
from search_spaces.files import write_text_atomic  # noqa: E402

from lut import get_device  # noqa: E402
from nas.api import SearchRequest, run_search  # noqa: E402
from nas.objectives import MobileEfficiencyScore  # noqa: E402
from nas.synflow import SynFlowEvaluator  # noqa: E402

MES = MobileEfficiencyScore()  # the paper's constants, as the searches use

REFERENCES = ("s0", "s1", "s2", "l")


def row(name: str, arch: Architecture, latency: float, score: float) -> dict:
    params = count_params(arch)
    return {"name": name, "latency_ms": round(latency, 4), "params_M": round(params / 1e6, 3),
            "gmacs": round(count_macs(arch) / 1e9, 3), "mes": round(MES(params, latency), 2),
            "proxy_score": round(score, 2), "depths": list(arch.depths), "widths": list(arch.widths)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="0.9,1.1,1.6,2.7")
    parser.add_argument("--objective", default="mes")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "search_vs_references.json"))
    args = parser.parse_args()
    space = get_space("efficientformer_v2")
    table = get_device("iphone12").default_table(space)
    proxy = SynFlowEvaluator.from_space(space, seed=0)  # the default evaluator of nas.search (seed 0)
    references = [row(name, space.reference(name), table.predict(space.reference(name)), proxy.score(space.reference(name)))
                  for name in REFERENCES]
    found = []
    for target in args.targets.split(","):
        outcome = run_search(SearchRequest(space.name, table, float(target), evaluator=proxy, objective=args.objective,
                                           table_name=get_device("iphone12").table_name(space)))
        arch = outcome.arch
        found.append({"target_ms": float(target), **row(f"found @ {target} ms", arch, arch.meta["predicted_latency_ms"],
                                                        arch.meta["score"])})
    lines = ["| network | latency (ms) | params (M) | GMACs | MES | proxy score | depths | widths |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for entry in sorted(references + found, key=lambda e: e["latency_ms"]):
        lines.append(f"| {entry['name']} | {entry['latency_ms']:.3f} | {entry['params_M']:.2f} | {entry['gmacs']:.3f} | "
                     f"{entry['mes']:.1f} | {entry['proxy_score']:.1f} | {entry['depths']} | {entry['widths']} |")
    report = {"benchmark": "search_vs_references", "what": __doc__.split("\n\n")[2].strip(),
              "table": {"device": "iphone12", "sha256": table.sha256}, "objective": args.objective,
              "references": references, "found": found, "markdown": "\n".join(lines)}
    write_text_atomic(Path(args.out), json.dumps(report, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
