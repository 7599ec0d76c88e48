"""The resumable state file every strategy writes (schema `latnas/search-state@1`).

One JSON object: the schema, the strategy's name, the settings that decide the search (what
`problem_settings` gives plus the strategy's own), the strategy's body (random generator state,
population, counters...) and `history`, the list of what was evaluated, in order. It is rewritten
atomically after every evaluation; history records never change once written, so each is
serialised once and a write costs a join, not a dump of everything. A state is resumed only by the
same search: any differing setting is a `ValueError` naming it.

A state file is not believed: latencies and params are priced again from the table, every score
must be finite, and `check_resumed_scores` scores a few recorded architectures again (the best,
the last and one drawn at random) and refuses the state when the evaluator disagrees, so an
edited score cannot become the search's result.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from search_spaces import Architecture
from search_spaces.files import FileError, parse_json_document, read_input_text, write_text_atomic
from search_spaces.limits import MAX_STATE_BYTES

from nas.problem import SearchProblem

STATE_SCHEMA = "latnas/search-state@1"
T = TypeVar("T")
#: recorded scores checked again on resume, and how close a fresh score must come
RESCORED_RECORDS = 3
SCORE_TOLERANCE = 1e-4


def problem_settings(problem: SearchProblem) -> dict[str, Any]:
    """The parts of a problem that decide a search's result, as plain JSON values."""
    evaluator = problem.evaluator
    return {
        "space": problem.space.name,
        "target_latency_ms": float(problem.target_latency),
        "max_params": problem.max_params,
        "objective": problem.objective.settings(),
        "mes": problem.mes.settings(),
        "evaluator": evaluator.settings() if callable(getattr(evaluator, "settings", None)) else None,
        "table_sha256": getattr(problem.predictor, "sha256", None),
    }


def _compact(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


class StateFile:
    """The state file of one search at `path` (None: a search that keeps no state)."""

    def __init__(self, path: str | Path | None, strategy: str, settings: dict[str, Any]) -> None:
        self.path = Path(path) if path is not None else None
        self.strategy = strategy
        self.settings = json.loads(json.dumps(settings))  # plain JSON types, as a reloaded file has them
        self._history: list[str] = []
        self._written_at = -math.inf

    def load(self) -> dict[str, Any] | None:
        """The stored state (with its `history` list) of this very search, or None when there is none.

        `ValueError` for an unreadable file, another schema, another strategy or other settings.
        """
        if self.path is None or not (self.path.exists() or self.path.is_symlink()):
            return None
        try:
            state = parse_json_document(read_input_text(self.path, "", MAX_STATE_BYTES), str(self.path))
        except FileError as error:
            raise ValueError(f"cannot read the search state: {error}") from None
        if not isinstance(state, dict) or state.get("schema") != STATE_SCHEMA:
            raise ValueError(f"{self.path}: not a search state (expected schema {STATE_SCHEMA!r})")
        differences = []
        if state.get("strategy") != self.strategy:
            differences.append(f"strategy {state.get('strategy')!r} != {self.strategy!r}")
        stored = state.get("settings") if isinstance(state.get("settings"), dict) else {}
        for key in sorted(set(stored) | set(self.settings)):
            if stored.get(key) != self.settings.get(key):
                differences.append(f"{key} {stored.get(key)!r} != {self.settings.get(key)!r}")
        if differences:
            raise ValueError(f"{self.path}: the state belongs to a different search ({'; '.join(differences)}); "
                             "remove it or choose another state path")
        if not isinstance(state.get("history"), list):
            raise ValueError(f"{self.path}: corrupt search state: no history list")
        return state

    def save(self, body: dict[str, Any], history: Sequence[T], to_dict: Callable[[T], dict[str, Any]],
             min_interval_s: float = 0.0) -> None:
        """Write the state: `body` (the strategy's own fields) and the whole `history` so far
        (records only ever appended; `to_dict` is called once per record). With `min_interval_s`,
        a save within that many seconds of the last one is skipped (callers force one at their
        checkpoints), so microsecond evaluators do not spend their time rewriting the file."""
        if self.path is None:
            return
        now = time.monotonic()
        if min_interval_s and now - self._written_at < min_interval_s:
            return
        self._written_at = now
        self._history.extend(_compact(to_dict(record)) for record in history[len(self._history):])
        head = _compact({"schema": STATE_SCHEMA, "strategy": self.strategy, "settings": self.settings, **body})
        write_text_atomic(self.path, f'{head[:-1]},"history":[{",".join(self._history)}]}}\n')


def check_resumed_scores(records: Sequence[tuple[Architecture, float]], evaluator: Any, path: Path | None,
                         rescore: Callable[[Architecture], float] | None = None) -> None:
    """Refuse a resumed history whose scores are not finite, or which the evaluator (its `score`,
    or `rescore` when given) does not give again for the best, the last and one randomly drawn record
    (`ValueError` naming the file)."""
    if not records:
        return
    for index, (_, score) in enumerate(records, start=1):
        if not math.isfinite(score):
            raise ValueError(f"{path}: corrupt search state: evaluation {index} has score {score!r}")
    best = max(range(len(records)), key=lambda i: records[i][1])
    drawn = int(np.random.default_rng(len(records)).integers(len(records)))
    for index in sorted({best, len(records) - 1, drawn})[:RESCORED_RECORDS]:
        arch, stored = records[index]
        fresh = float((rescore or evaluator.score)(arch))
        if not math.isclose(fresh, stored, rel_tol=SCORE_TOLERANCE, abs_tol=SCORE_TOLERANCE):
            raise ValueError(f"{path}: the state records score {stored:.6g} for evaluation {index + 1}, the evaluator "
                             f"gives {fresh:.6g}: the state was edited or comes from another evaluator")
