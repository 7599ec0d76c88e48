"""The resumable state file every strategy writes (schema `latnas/search-state@1`).

One JSON object: the schema, the strategy's name, the settings that decide the search (what
`problem_settings` gives plus the strategy's own), the strategy's body (random generator state,
population, counters...) and `history`, the list of what was evaluated, in order. It is rewritten
atomically after every evaluation; history records never change once written, so each is
serialised once and a write costs a join, not a dump of everything. A state is resumed only by the
same search: any differing setting is a `ValueError` naming it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from search_spaces.files import write_text_atomic

from nas.problem import SearchProblem

STATE_SCHEMA = "latnas/search-state@1"
T = TypeVar("T")


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
        if self.path is None or not self.path.exists():
            return None
        try:
            state = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{self.path}: cannot read the search state: {error}") from None
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
