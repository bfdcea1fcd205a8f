"""Out-of-source calibration: source folds, temperature scaling, thresholds that keep their promise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from training.calibration import (
    calibrated,
    expected_calibration_error,
    fit_temperature,
    fold_temperature_into_head,
    out_of_source,
    recall_at_precision,
    source_auc,
    source_folds,
)
from training.data import Sample, category_targets


def _logits(margin: np.ndarray) -> np.ndarray:
    """Two class logits (benign 0, harmful `margin`) plus four category logits."""
    return np.column_stack([np.zeros_like(margin), margin, np.zeros((len(margin), 4))]).astype(np.float32)


def _overconfident(n: int, temperature: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(z) while the model reports margins z * temperature: the right T is known."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    return _logits(z * temperature), y


def test_temperature_scaling_recovers_a_known_overconfidence() -> None:
    logits, y = _overconfident(20_000, 3.0)
    t = fit_temperature(logits, y)
    assert t == pytest.approx(3.0, rel=0.08)
    before, after = (expected_calibration_error(y, calibrated(logits, s)) for s in (1.0, t))
    assert after < 0.02 < before


def test_the_temperature_folded_into_the_head_is_the_temperature_applied_to_scores() -> None:
    torch.manual_seed(0)
    head = nn.Linear(8, 6)
    x = torch.randn(5, 8)
    before = head(x).detach().numpy()
    fold_temperature_into_head(head, 2.5)
    after = head(x).detach().numpy()
    assert calibrated(after, 1.0) == pytest.approx(calibrated(before, 2.5), abs=1e-6)
    assert after[:, 2:] == pytest.approx(before[:, 2:], abs=1e-6)  # category logits untouched


def test_source_folds_are_deterministic_and_balanced() -> None:
    sources = ["a"] * 50 + ["b"] * 40 + ["c"] * 30 + ["d"] * 20 + ["e"] * 10
    folds = source_folds(sources, 2)
    assert folds == source_folds(list(reversed(sources)), 2)  # order of photos does not matter
    load = [sum(sources.count(s) for s, f in folds.items() if f == k) for k in (0, 1)]
    assert sorted(load) == [70, 80] and set(folds) == set(sources)


def test_thresholds_keep_their_promise_on_the_predictions_they_were_picked_on() -> None:
    logits, y = _overconfident(4000, 2.0, seed=1)
    sources = np.array(["s1", "s2"] * 2000)
    report = out_of_source(logits, y, sources, {"s1": 0, "s2": 1}, 0.90, 0.98)
    p = calibrated(logits, report.temperature)
    assert (p[y == 1] >= report.threshold).mean() >= 0.90
    assert (p[y == 1] >= report.threshold).mean() < 0.905  # the highest such threshold: no recall given away
    assert (p[y == 1] >= report.review_threshold).mean() >= 0.98
    assert report.review_threshold <= report.threshold
    summary = report.summary()
    assert summary["source_auc_worst"] <= summary["source_auc_mean"] and summary["worst_source"] in ("s1", "s2")


def test_a_one_class_source_is_scored_against_the_other_class_of_every_source() -> None:
    y = np.array([1, 1, 0, 0, 1, 0])
    p = np.array([0.9, 0.2, 0.1, 0.3, 0.8, 0.7])
    src = np.array(["guns", "guns", "pets", "pets", "mixed", "mixed"])
    auc = source_auc(y, p, src)
    assert auc["guns"] == pytest.approx(4 / 6)  # 0.9 beats all three benign photos, 0.2 beats one (0.1)
    assert auc["pets"] == pytest.approx(5 / 6)  # 0.1 and 0.3 against harmful 0.9, 0.2, 0.8
    assert auc["mixed"] == 1.0  # a source with both classes: its own photos only


def test_recall_at_precision() -> None:
    y = np.array([1, 1, 0, 1, 0])
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.1])
    assert recall_at_precision(y, p, 0.9) == pytest.approx(2 / 3)
    assert recall_at_precision(y, p, 0.75) == pytest.approx(1.0)


def test_category_targets_from_subclasses() -> None:
    def sample(label: int, subclass: str) -> Sample:
        return Sample(path=None, label=label, subclass=subclass, split="train")  # type: ignore[arg-type]

    assert category_targets(sample(1, "long_gun")) == ([1.0, 0.0, 0.0, 0.0], True)
    assert category_targets(sample(1, "blade")) == ([0.0, 1.0, 0.0, 0.0], True)
    assert category_targets(sample(1, "violence_staged")) == ([0.0, 0.0, 1.0, 0.0], True)
    assert category_targets(sample(1, "smoke_plume")) == ([0.0, 0.0, 0.0, 1.0], True)
    assert category_targets(sample(0, "weapon_lookalike")) == ([0.0] * 4, True)  # benign: none of them
    assert category_targets(sample(1, "something_new"))[1] is False  # unknown: left out of the category loss
