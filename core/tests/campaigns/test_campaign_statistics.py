"""Control assignment (stable, unbiased) and the uplift interval (known values, coverage by simulation)."""

from __future__ import annotations

import random

import pytest
from tongcrm.campaigns import control, stats

# chi-square critical values at p = 0.001 (df 1 and df 6): a fair assignment exceeds them once in a thousand
_CHI2_1 = 10.828
_CHI2_6 = 22.458


def test_assignment_is_stable_and_depends_on_campaign_and_seed() -> None:
    ids = range(1, 5001)
    first = control.split(7, ids, 2000, "s")
    assert first == control.split(7, ids, 2000, "s")  # same answer in every call (and process: a pure hash)
    assert first == [m for m in ids if control.in_control(7, m, 2000, "s")]
    assert first != control.split(8, ids, 2000, "s") and first != control.split(7, ids, 2000, "t")
    assert control.split(7, ids, 0, "s") == []
    # a larger share only adds members: whoever was control stays control
    assert set(first) <= set(control.split(7, ids, 3000, "s"))


@pytest.mark.parametrize(("percent", "bp"), [(0, 0), (12.5, 1250), (50, 5000), (0.01, 1)])
def test_share_in_basis_points(percent: float, bp: int) -> None:
    assert control.share_bp(percent) == bp


@pytest.mark.parametrize("percent", [-0.01, 50.01, 60, 10.005])
def test_share_outside_0_to_50_or_too_precise_is_refused(percent: float) -> None:
    with pytest.raises(ValueError, match="control share"):
        control.share_bp(percent)


def test_assignment_is_unbiased_chi_square_over_generated_audiences() -> None:
    """Over 20 generated audiences (random ids, random shares, random seeds): the control share matches the
    configured one, and the group is independent of a member attribute (the id's residue mod 7, standing in for
    anything known about the member) — both by chi-square at p = 0.001."""
    rng = random.Random(20261206)
    failures = 0
    for _ in range(20):
        ids = rng.sample(range(1, 10_000_000), 6000)
        bp = rng.choice([500, 1000, 2500, 5000])
        seed = str(rng.random())
        campaign = rng.randint(1, 10_000)
        held = set(control.split(campaign, ids, bp, seed))
        p = bp / 10_000
        observed = (len(held), len(ids) - len(held))
        expected = (len(ids) * p, len(ids) * (1 - p))
        fit = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))
        table = [[0, 0] for _ in range(7)]
        for m in ids:
            table[m % 7][m in held] += 1
        total_c = len(held)
        chi = 0.0
        for row in table:
            n = sum(row)
            for col, count in enumerate(row):
                e = n * (total_c if col else len(ids) - total_c) / len(ids)
                chi += (count - e) ** 2 / e
        failures += fit > _CHI2_1 or chi > _CHI2_6
    assert failures == 0


def test_newcombe_matches_the_published_example() -> None:
    # Newcombe (1998), Statistics in Medicine 17:873, table II example (a): 56/70 vs 48/80, method 10
    d, low, high = stats.newcombe(56, 70, 48, 80)
    assert d == pytest.approx(0.2)
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)
    # Wilson for 0 of 10 is (0, 0.2775)
    assert stats.wilson(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)


def _simulate(rng: random.Random, n: int, p_t: float, p_c: float) -> stats.Uplift:
    x_t = sum(rng.random() < p_t for _ in range(n))
    n_c = n // 4
    x_c = sum(rng.random() < p_c for _ in range(n_c))
    return stats.uplift(x_t, n, x_c, n_c)


def test_a_known_effect_is_recovered_within_the_interval_in_at_least_93_of_100() -> None:
    rng = random.Random(618)
    covered = sum(u.low <= 0.03 <= u.high for u in (_simulate(rng, 4000, 0.08, 0.05) for _ in range(100)))
    assert covered >= 93


def test_no_effect_is_covered_by_the_interval_in_at_least_93_of_100() -> None:
    rng = random.Random(1111)
    covered = sum(u.low <= 0 <= u.high for u in (_simulate(rng, 4000, 0.05, 0.05) for _ in range(100)))
    assert covered >= 93


def test_small_samples_say_so_instead_of_concluding() -> None:
    small = stats.uplift(3, 20, 0, 5)
    assert small.conclusion == "too_small" and "at least 30" in (small.too_small or "")
    rare = stats.uplift(1, 200, 0, 50)
    assert rare.conclusion == "too_small" and "expected" in (rare.too_small or "")
    clear = stats.uplift(400, 2000, 50, 500)
    assert clear.too_small is None and clear.conclusion == "positive"
    assert clear.relative == pytest.approx((0.2 - 0.1) / 0.1)
    assert stats.uplift(40, 400, 0, 400).relative is None  # control rate 0: no relative uplift
    assert stats.uplift(50, 0, 5, 10).low == -1.0  # an empty group: the whole range
