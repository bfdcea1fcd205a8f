"""Out-of-source calibration: source folds, temperature scaling, thresholds that keep their promise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from training.calibration import (
    at_pair,
    calibrated,
    expected_calibration_error,
    fit_temperature,
    fold_temperature_into_head,
    load_predictions,
    nested_check,
    out_of_source,
    pooled,
    recall_at_precision,
    save_predictions,
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


def test_nested_check_judges_each_fold_by_a_threshold_picked_on_the_others() -> None:
    """Two folds of the same kind keep the promise on each other; a fold whose harmful photos score lower (a kind
    the other folds lack) gets less recall at the threshold picked without it, which a pooled pick would hide."""
    rng = np.random.default_rng(3)
    margins = [rng.normal(2.0, 1.0, 2000), rng.normal(2.0, 1.0, 2000), rng.normal(0.0, 1.0, 2000)]
    logits = _logits(np.concatenate(margins))
    y = np.ones(6000, dtype=int)
    y[::2] = 0  # benign photos: low margins in every fold
    logits[y == 0, 1] = rng.normal(-2.0, 1.0, 3000)
    fold_of = np.repeat([0, 1, 2], 2000)
    rows = nested_check(logits, y, fold_of, 0.90)
    assert [r["fold"] for r in rows] == [0, 1, 2] and all(r["n_harmful"] == 1000 for r in rows)
    assert rows[2]["recall"] < 0.6 < 0.85 < rows[0]["recall"]
    total = pooled(rows)
    assert total["recall"] == pytest.approx(np.mean([r["recall"] for r in rows]))  # equal folds: plain mean
    assert 0 <= total["benign_flagged"] <= 1


def test_saved_predictions_round_trip_and_give_both_operating_points(tmp_path: Path) -> None:
    logits, y = _overconfident(3000, 2.0, seed=2)
    sources = np.array(["a", "b", "c"] * 1000)
    folds = {"a": 0, "b": 1, "c": 1}
    save_predictions(tmp_path / "oos.npz", logits, y, sources, folds)
    back = load_predictions(tmp_path / "oos.npz")
    assert np.array_equal(back[0], logits) and np.array_equal(back[1], y)
    assert np.array_equal(back[2], sources) and back[3] == folds
    report = out_of_source(*back, 0.90, 0.98)
    strict = at_pair(back[0], back[1], report.temperature, (0.99, 0.98))  # far above the out-of-source pick
    nested = {name: pooled(rows) for name, rows in report.nested.items()}
    assert strict["threshold"]["recall"] < nested["threshold"]["recall"]  # less recall, fewer flags
    assert strict["threshold"]["benign_flagged"] < nested["threshold"]["benign_flagged"]
    assert nested["review_threshold"]["recall"] >= 0.95
