"""Several seeds: the spread of a measurement and a comparison that knows the noise, on hand-made numbers."""

import math

import pytest

from reslab.experiments.spread import Difference, Spread, Z


def test_spread_is_the_mean_with_the_sample_deviation_and_its_standard_error():
    s = Spread([0.10, 0.12, 0.14])
    assert s.n == 3 and s.mean == pytest.approx(0.12)
    assert s.std == pytest.approx(0.02) and s.sem == pytest.approx(0.02 / math.sqrt(3))
    assert s.text() == "12.00% ± 1.15 (SEM, 3 seeds)"
    assert s.describe() == {"values": [0.10, 0.12, 0.14], "n": 3, "mean": s.mean, "std": s.std, "sem": s.sem}
    one = Spread(0.0653)
    assert one.n == 1 and one.std is None and one.sem is None and one.text() == "6.53% (1 seed)"
    with pytest.raises(ValueError):
        Spread([])


def test_a_difference_beyond_its_noise_is_resolved_with_its_sign():
    deep, shallow = Spread([0.080, 0.082, 0.081]), Spread([0.070, 0.071, 0.069])
    d = Difference(deep, shallow)
    assert d.diff == pytest.approx(0.011) and d.se == pytest.approx(math.hypot(deep.sem, shallow.sem))
    assert d.resolved and d.sign == 1 and abs(d.diff) > Z * d.se
    assert "resolved by 3 seeds" in d.criterion() and "+1.10 points" in d.criterion()
    assert Difference(shallow, deep).sign == -1


def test_a_difference_within_its_noise_is_not_resolved_and_says_how_many_seeds_would():
    # means 0.5 points apart, each seed scattered by about 1 point: 3 seeds cannot tell
    a, b = Spread([0.075, 0.065, 0.085]), Spread([0.070, 0.060, 0.080])
    d = Difference(a, b)
    assert not d.resolved and d.sign == 0 and abs(d.diff) < Z * d.se
    needed = d.seeds_needed
    # at the same spread, `needed` seeds shrink the standard error below |diff| / Z
    assert needed > 3 and abs(d.diff) > Z * d.se * math.sqrt(3 / needed)
    assert abs(d.diff) <= Z * d.se * math.sqrt(3 / (needed - 1)) or needed == 4
    assert f"3 seeds do not resolve it; about {needed} seeds would" in d.criterion()
    # the means 0.01 points apart against 0.11 of noise: thousands of seeds, said as "practically equal"
    tiny = Difference(Spread([0.0739, 0.0720, 0.0758]), Spread([0.0738, 0.0733, 0.0743]))
    assert tiny.seeds_needed > 100 and "more than 100 seeds would be needed at this spread: practically equal" in (
        tiny.criterion()
    )


def test_a_single_run_resolves_nothing_and_says_it_is_a_single_run():
    d = Difference(Spread(0.0653), Spread(0.0713))
    assert d.se is None and not d.resolved and d.sign == 0 and d.seeds_needed is None
    assert "a single run" in d.criterion()


def test_a_claim_over_seeds_is_called_only_when_every_seed_agrees():
    from reslab.experiments.seeds import agreement

    findings = [
        {"plain explodes": True, "plain shatters": True, "plain sharper": False},
        {"plain explodes": True, "plain shatters": False, "plain sharper": False},
        {"plain explodes": True, "plain shatters": True, "plain sharper": False},
    ]
    text = agreement(findings, [0, 1, 2], name="gradients")
    assert "plain explodes: yes, on all 3 seeds." in text and "plain sharper: no, on all 3 seeds." in text
    assert "plain shatters: not resolved: yes on 2 of 3 seeds." in text
    assert "the seeds do not settle every claim" in text and "holding: plain explodes." in text
    settled = agreement(findings[:1] * 2, [0, 1], name="gradients")
    assert "every claim is settled" in settled


def test_spreads_of_hand_made_numbers_and_their_table():
    from reslab.experiments.seeds import spread_rows, spread_table, spreads

    per_seed = [{"ResNet-20": {"error": 0.10, "rise": None}}, {"ResNet-20": {"error": 0.14, "rise": 0.5}}]
    table = spreads(per_seed)
    assert table["ResNet-20"]["error"].values == (0.10, 0.14) and table["ResNet-20"]["rise"] is None
    assert "| ResNet-20 | error | 0.12 ± 0.02 | 0.028 | 0.1, 0.14 |" in spread_table(table)
    rows = spread_rows(per_seed, [0, 1])
    assert {(r["seed"], r["quantity"], r["value"]) for r in rows} == {
        (0, "error", 0.10), (0, "rise", None), (1, "error", 0.14), (1, "rise", 0.5)
    }  # fmt: skip
