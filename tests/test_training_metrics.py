"""Metrics against hand-computed values, threshold selection for a target recall, the config threshold line."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from training.evaluation import METRIC_KEYS, auc_interval, compute_metrics, error_table, per_subclass
from training.thresholds import read_threshold, threshold_for_recall, write_threshold

ROOT = Path(__file__).resolve().parent.parent


def test_metrics_match_hand_computed_values() -> None:
    y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    s = [0.9, 0.8, 0.4, 0.2, 0.7, 0.3, 0.1, 0.1, 0.05, 0.6]
    m = compute_metrics(y, s, 0.5)
    assert tuple(m) == METRIC_KEYS
    assert m["confusion_matrix"] == {"tp": 2, "fp": 2, "tn": 4, "fn": 2}
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5) and m["f1"] == pytest.approx(0.5)
    # AUC: of 24 (pos, neg) pairs, pos wins 19 (0.9: 6, 0.8: 6, 0.4: 4, 0.2: 3)
    assert m["roc_auc"] == pytest.approx(19 / 24)
    assert m["n_images"] == 10 and m["threshold"] == 0.5
    lower = compute_metrics(y, s, 0.3)  # 0.3 counts as harmful (>=)
    assert lower["confusion_matrix"] == {"tp": 3, "fp": 3, "tn": 3, "fn": 1}
    assert lower["precision"] == pytest.approx(0.5) and lower["recall"] == pytest.approx(0.75)
    assert lower["f1"] == pytest.approx(0.6)


def test_threshold_for_recall_picks_the_highest_threshold_reaching_the_target() -> None:
    y = [1, 1, 1, 1, 0, 0]
    s = [0.9, 0.7, 0.5, 0.2, 0.6, 0.1]
    assert threshold_for_recall(y, s, 0.75) == 0.5  # 3 of 4 harmful at >= 0.5
    assert threshold_for_recall(y, s, 0.9) == 0.2
    assert threshold_for_recall(y, s, 0.25) == 0.9
    assert threshold_for_recall(y, s, 1.0) == 0.2
    assert compute_metrics(y, s, threshold_for_recall(y, s, 0.75))["recall"] >= 0.75
    with pytest.raises(ValueError, match="no harmful"):
        threshold_for_recall([0, 0], [0.1, 0.2], 0.9)
    with pytest.raises(ValueError, match="target recall"):
        threshold_for_recall(y, s, 0.0)


def test_per_subclass_and_error_table() -> None:
    y = [1, 1, 1, 0, 0, 0]
    s = [0.9, 0.2, 0.1, 0.8, 0.1, 0.3]
    groups = per_subclass(y, s, ["gun", "gun", "knife", "people", "people", "cats"], 0.5)
    assert groups["gun"] == {"label": "harmful", "n": 2, "correct": 0.5, "mean_score": pytest.approx(0.55),
                             "roc_auc": pytest.approx(4 / 6),  # 0.9 beats all three benign, 0.2 beats 0.1
                             "roc_auc_95": groups["gun"]["roc_auc_95"]}
    low, high = groups["gun"]["roc_auc_95"]
    assert 0 <= low <= 4 / 6 <= high <= 1
    assert "roc_auc" not in groups["people"]
    assert groups["people"]["correct"] == 0.5 and groups["cats"]["correct"] == 1.0
    table = error_table(groups).splitlines()
    assert [line.split(" | ")[0] for line in table[2:]] == ["| gun", "| knife", "| people"]


def test_auc_interval_brackets_the_auc_and_narrows_with_more_photos() -> None:
    rng = np.random.default_rng(1)
    pos, neg = rng.normal(1.5, 1, 80), rng.normal(0, 1, 700)
    auc = roc_auc_score(np.r_[np.ones(80), np.zeros(700)], np.r_[pos, neg])
    low, high = auc_interval(pos, neg)
    assert low < auc < high and 0.02 < high - low < 0.15
    more = auc_interval(rng.normal(1.5, 1, 800), neg)
    assert more[1] - more[0] < (high - low) / 2
    assert auc_interval([0.9, 0.8], [0.1, 0.2]) == [1.0, 1.0]  # separated in every resample
    ties = auc_interval([0.5] * 5, [0.5] * 5)  # all tied: AUC 0.5 in every resample (ties count half)
    assert ties == [0.5, 0.5]


def test_write_threshold_keeps_the_rest_of_the_config(tmp_path: Path) -> None:
    config = tmp_path / "m.yaml"
    shutil.copy(ROOT / "model-archive" / "config" / "mobilenet_v2.yaml", config)
    before = config.read_text()
    write_threshold(config, 0.123456)
    after = config.read_text()
    assert read_threshold(config) == 0.123456
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]
    assert len(changed) == 1 and changed[0][1].strip() == "threshold: 0.123456"
    (tmp_path / "bad.yaml").write_text("handler:\n  torch_threads: 0\n")
    with pytest.raises(ValueError, match="no `threshold:`"):
        write_threshold(tmp_path / "bad.yaml", 0.5)
