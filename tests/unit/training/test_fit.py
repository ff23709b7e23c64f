from __future__ import annotations

import numpy as np
import pytest
import torch

from training.fit import example_weights, fit_calibration, listwise_loss


def test_example_weights_halve_every_half_life_before_the_newest_basket():
    day = 86_400
    times = np.array([100 * day, 40 * day, 70 * day, 100 * day])
    assert example_weights(times, 30.0).tolist() == pytest.approx([1.0, 0.25, 0.5, 1.0])
    assert example_weights(times, 0.0).tolist() == [1.0] * 4
    assert example_weights(np.array([], dtype=np.int64), 30.0).size == 0


def test_a_weighted_listwise_loss_is_the_weighted_mean_of_the_examples():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    mask = torch.ones_like(target)
    each = [float(listwise_loss(logits[i : i + 1], target[i : i + 1], mask[i : i + 1])) for i in range(2)]
    weighted = float(listwise_loss(logits, target, mask, torch.tensor([1.0, 3.0])))
    assert weighted == pytest.approx((each[0] + 3 * each[1]) / 4)
    assert float(listwise_loss(logits, target, mask)) == pytest.approx(sum(each) / 2)


def test_the_home_policy_asks_for_the_candidate_set_training_evaluates():
    """The served home candidate set (services/gateway/policies.yaml) is the one the ranker is trained and
    evaluated on (FitConfig's defaults); cold start only answers subjects without history."""
    import yaml

    from services.gateway.policies import DEFAULT_POLICY_FILE
    from training.fit import FitConfig

    config = FitConfig()
    evaluated = {
        "two_tower": config.retrieve,
        "co_visitation": config.co_visit,
        "buy_again": config.repeat,
        "popularity": config.popular,
        "trending": config.trending,
    }
    policies = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())["policies"]
    for name in ("home", "home_diverse"):
        (retrieval,) = [s for s in policies[name]["sources"] if s["component"] == "RetrievalSources"]
        served = dict(retrieval["params"]["sources"])
        assert served.pop("cold_start") > 0
        assert served == evaluated, name


def test_calibration_recovers_the_scale_bias_and_bought_before_shift_of_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=60_000)
    before = rng.random(60_000) < 0.3
    truth = 1.0 / (1.0 + np.exp(-(0.6 * logits - 2.0 + 0.8 * before)))
    labels = (rng.random(60_000) < truth).astype(np.float32)
    scale, bias, shift = fit_calibration(logits, labels, before)
    assert scale == pytest.approx(0.6, abs=0.05)
    assert bias == pytest.approx(-2.0, abs=0.08)
    assert shift == pytest.approx(0.8, abs=0.08)


def test_calibration_has_no_bought_before_shift_when_the_lists_hold_one_group():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=50_000)
    labels = (rng.random(50_000) < 1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    for group in (np.zeros(50_000, bool), np.ones(50_000, bool)):  # discovery lists / only items bought before
        scale, _, shift = fit_calibration(logits, labels, group)
        assert shift == 0.0 and scale == pytest.approx(1.0, abs=0.05)


def test_too_little_usable_data_is_a_data_error_with_the_fix(tmp_path):
    from training.data.loaders import load_sequences
    from training.data.schema import DataError
    from training.fit import fit

    path = tmp_path / "short.txt"
    path.write_text("u1 a b\nu2 b c\n", encoding="utf-8")
    with pytest.raises(DataError, match="3 or more baskets.*train on more"):
        fit(load_sequences(path))
    # Sessions only: however many baskets each has, no customer can be held out, and the message says why.
    from training.data.loaders import load_events

    events = tmp_path / "sessions.csv"
    rows = [f"purchase,{1_700_000_000 + 4000 * b},,s{s},i{(s + b) % 7}" for s in range(3) for b in range(4)]
    events.write_text("event_type,timestamp,user_id,session_id,item_id\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match="every shopper is anonymous"):
        fit(load_events(events))
