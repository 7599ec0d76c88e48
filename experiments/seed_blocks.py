"""Two networks trained standalone, compared seed by seed.

A seed of the standalone recipe (`supernet.standalone`) fixes, for every network alike, the order in
which the training images arrive, so it moves every network's accuracy the same way: of the 32 networks
the studies trained at seeds 0 and 1 (committed on 2026-12-07), seed 0 ends above seed 1 in 30, by
0.79 points on average. Each seed is therefore a block of a randomised block design:

    accuracy(network, seed) = network effect + seed effect + noise

`seed_noise` fits that model by least squares to every training a study holds and returns what is
left, one run's noise with the seed's shared effect removed; `paired_difference` compares two
networks at the seeds both were trained at, where the seed effects cancel, and judges the mean
difference against the Student t quantile of its standard error. Judging differences against the
raw spread between seeds instead (what the studies did before 2026-12-07) counts the shared seed
effect as noise twice and calls real half-point differences ties.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Mapping

import numpy as np
from scipy import stats

#: two-sided level of a verdict: a difference is called only when its 95% interval excludes 0
CONFIDENCE = 0.95


@dataclass(frozen=True)
class SeedNoise:
    """One standalone run's test-accuracy noise (points) once its network's and its seed's effects
    are removed, with the degrees of freedom it rests on and each seed's fitted effect (points,
    relative to the mean over seeds)."""

    std_points: float
    degrees_of_freedom: int
    seed_effects_points: Mapping[int, float]

    def to_dict(self) -> dict:
        return {"std_points": round(self.std_points, 3), "degrees_of_freedom": self.degrees_of_freedom,
                "seed_effects_points": {str(seed): round(effect, 3) for seed, effect in sorted(self.seed_effects_points.items())}}


def seed_noise(runs: Mapping[Hashable, Mapping[int, float]]) -> SeedNoise | None:
    """Fit network + seed effects to `runs` (network -> seed -> test accuracy in points) by least
    squares; None when no degree of freedom is left for the noise (no network trained at two seeds)."""
    cells = [(network, int(seed), float(value)) for network, by_seed in runs.items() for seed, value in by_seed.items()]
    if not cells:
        return None
    networks = list(dict.fromkeys(network for network, _, _ in cells))
    seeds = sorted({seed for _, seed, _ in cells})
    design = np.zeros((len(cells), len(networks) + len(seeds)))
    for row, (network, seed, _) in enumerate(cells):
        design[row, networks.index(network)] = 1.0
        design[row, len(networks) + seeds.index(seed)] = 1.0
    values = np.array([value for _, _, value in cells])
    coefficients, _, rank, _ = np.linalg.lstsq(design, values, rcond=None)
    freedom = len(cells) - int(rank)
    if freedom <= 0:
        return None
    residual = values - design @ coefficients
    # the seed effects are determined up to a constant shared with the network effects: centred
    effects = coefficients[len(networks):]
    return SeedNoise(std_points=float(math.sqrt(float(residual @ residual) / freedom)), degrees_of_freedom=freedom,
                     seed_effects_points={seed: float(effect - effects.mean()) for seed, effect in zip(seeds, effects)})


@dataclass(frozen=True)
class PairedDifference:
    """`ours` minus `theirs` in mean test accuracy over the seeds both were trained at (points),
    its standard error from the study's `SeedNoise`, the half-width a difference must exceed to be
    called, and the outcome: "better", "worse", "tie" or "unknown spread" (no noise estimate or no
    shared seed)."""

    difference_points: float | None
    standard_error_points: float | None
    critical_points: float | None
    seeds: tuple[int, ...]
    outcome: str

    def to_dict(self) -> dict:
        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 3)

        return {"difference_points": rounded(self.difference_points),
                "standard_error_points": rounded(self.standard_error_points),
                "critical_points": rounded(self.critical_points), "seeds": list(self.seeds)}

    def verdict(self, better: str, worse: str) -> str:
        """The outcome in a study's words: `better` / `worse` for a call, else a tie or no call."""
        return {"better": better, "worse": worse, "tie": "tie within the seed spread"}.get(self.outcome, self.outcome)


def paired_difference(ours: Mapping[int, float], theirs: Mapping[int, float], noise: SeedNoise | None) -> PairedDifference:
    """Compare two networks' standalone test accuracies (seed -> points) seed by seed."""
    seeds = tuple(sorted(set(map(int, ours)) & set(map(int, theirs))))
    if not seeds:
        return PairedDifference(None, None, None, seeds, "unknown spread")
    difference = float(np.mean([ours[seed] - theirs[seed] for seed in seeds]))
    if noise is None:
        return PairedDifference(difference, None, None, seeds, "unknown spread")
    error = noise.std_points * math.sqrt(2 / len(seeds))
    critical = float(stats.t.ppf(0.5 + CONFIDENCE / 2, noise.degrees_of_freedom)) * error
    outcome = "better" if difference > critical else "worse" if difference < -critical else "tie"
    return PairedDifference(difference, error, critical, seeds, outcome)
