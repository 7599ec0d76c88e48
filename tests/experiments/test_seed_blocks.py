"""The seed-blocked comparison of standalone trainings (experiments.seed_blocks)."""

import pytest

from experiments.seed_blocks import SeedNoise, paired_difference, seed_noise


def test_the_seeds_shared_effect_is_removed_from_the_noise():
    # seed 0 above seed 1 by 1.0 / 0.6 / 0.8 points: seed effects +-0.4, what is left +-0.1 (A, B), 0 (C)
    runs = {"a": {0: 83.0, 1: 82.0}, "b": {0: 81.0, 1: 80.4}, "c": {0: 80.0, 1: 79.2}}
    noise = seed_noise(runs)
    assert noise.degrees_of_freedom == 2  # 6 runs, 3 networks + 2 seeds - 1
    assert noise.std_points == pytest.approx((0.04 / 2) ** 0.5)
    assert noise.seed_effects_points == pytest.approx({0: 0.4, 1: -0.4})
    # a, b compared seed by seed: 2.0 and 1.6, so 1.8 +- 0.141, called against t(0.975, 2) = 4.303 x SE
    paired = paired_difference(runs["a"], runs["b"], noise)
    assert paired.difference_points == pytest.approx(1.8) and paired.seeds == (0, 1)
    assert paired.standard_error_points == pytest.approx(0.1414, abs=1e-4)
    assert paired.critical_points == pytest.approx(4.3027 * 0.1414, abs=1e-3)
    assert paired.outcome == "better"
    assert paired_difference(runs["b"], runs["a"], noise).outcome == "worse"


def test_an_unbalanced_study_fits_every_network_at_the_seeds_it_has():
    runs = {"a": {0: 83.0, 1: 82.0, 2: 82.5}, "b": {0: 81.0, 1: 80.0}, "c": {2: 70.0}}  # c: no df, its own effect
    noise = seed_noise(runs)
    assert noise.degrees_of_freedom == 6 - (3 + 3 - 1)
    assert noise.std_points == pytest.approx(0.0, abs=1e-9)  # a and b move together exactly
    assert noise.seed_effects_points[0] - noise.seed_effects_points[1] == pytest.approx(1.0)


def test_a_difference_inside_the_noise_is_a_tie_and_no_estimate_calls_nothing():
    noise = SeedNoise(std_points=0.5, degrees_of_freedom=10, seed_effects_points={0: 0.4, 1: -0.4})
    # 0.4 at 2 seeds: SE 0.5, critical t(0.975, 10) x 0.5 = 1.114
    tie = paired_difference({0: 83.0, 1: 82.2}, {0: 82.6, 1: 81.8}, noise)
    assert tie.outcome == "tie" and tie.critical_points == pytest.approx(1.114, abs=1e-3)
    assert tie.verdict("found better", "reference better") == "tie within the seed spread"
    assert paired_difference({0: 83.0, 1: 82.0}, {0: 84.2, 1: 83.2}, noise).outcome == "worse"
    # only seeds both sides have are compared; none shared or no noise estimate: no call
    assert paired_difference({0: 83.0, 1: 82.0, 2: 90.0}, {0: 82.0, 1: 81.0}, noise).difference_points == 1.0
    assert paired_difference({0: 83.0}, {1: 82.0}, noise).outcome == "unknown spread"
    assert paired_difference({0: 83.0}, {0: 82.0}, None).outcome == "unknown spread"
    assert seed_noise({"a": {0: 83.0}, "b": {1: 82.0}}) is None and seed_noise({}) is None
