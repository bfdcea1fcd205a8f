"""Metrics with harmful as the positive class, per-subclass breakdowns and the reference-style tables."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

METRIC_KEYS = ("accuracy", "precision", "recall", "f1", "roc_auc", "threshold", "n_images", "confusion_matrix")
REFERENCE = {  # the reference system's published held-out results
    "mobilenet_v2": {"accuracy": 0.835, "precision": 0.87, "recall": 0.79, "f1": 0.83, "roc_auc": 0.92},
    "resnet50": {"accuracy": 0.822, "precision": 0.96, "recall": 0.68, "f1": 0.79, "roc_auc": 0.93},
}


def compute_metrics(y_true: Sequence[int], scores: Sequence[float], threshold: float) -> dict:
    """Exactly METRIC_KEYS; y_true is 1 for harmful; predicted harmful when score >= threshold."""
    y = np.asarray(y_true, dtype=int)
    s = np.asarray(scores, dtype=float)
    pred = (s >= threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    auc = float(roc_auc_score(y, s)) if len(set(y.tolist())) == 2 else None  # undefined with one class: null
    return {
        "accuracy": (tp + tn) / len(y) if len(y) else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "roc_auc": auc,
        "threshold": float(threshold),
        "n_images": int(len(y)),
        "confusion_matrix": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
    }


def per_subclass(
    y_true: Sequence[int], scores: Sequence[float], subclasses: Sequence[str], threshold: float
) -> dict[str, dict]:
    """Per subclass: count, share classified correctly and mean score (recall for harmful, 1-FPR for benign);
    for a harmful subclass also its ROC-AUC against every benign image of the set."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, sub in enumerate(subclasses):
        groups[sub].append(i)
    y = np.asarray(y_true, dtype=int)
    s = np.asarray(scores, dtype=float)
    out = {}
    for sub in sorted(groups):
        idx = np.asarray(groups[sub])
        correct = ((s[idx] >= threshold).astype(int) == y[idx]).mean()
        out[sub] = {
            "label": "harmful" if y[idx[0]] == 1 else "benign",
            "n": int(len(idx)),
            "correct": float(correct),
            "mean_score": float(s[idx].mean()),
        }
        benign = s[y == 0]
        if y[idx[0]] == 1 and len(benign):
            keep = np.concatenate([s[idx], benign])
            out[sub]["roc_auc"] = float(roc_auc_score(np.r_[np.ones(len(idx)), np.zeros(len(benign))], keep))
            out[sub]["roc_auc_95"] = auc_interval(s[idx], benign)
    return out


def auc_interval(positives: np.ndarray, negatives: np.ndarray, rounds: int = 2000, seed: int = 0) -> list[float]:
    """95 % bootstrap interval of the ROC-AUC of `positives` against `negatives`, each resampled on its own
    (the subclasses are small: 77 violence test photos put a +-0.015 spread on an AUC near 0.97, so a target
    of 0.97 cannot be told from 0.967 without it). AUC = P(pos > neg) + P(pos == neg) / 2, by sorted search."""
    rng = np.random.default_rng(seed)
    pos, neg = np.asarray(positives, dtype=float), np.asarray(negatives, dtype=float)
    aucs = np.empty(rounds)
    for r in range(rounds):
        p = pos[rng.integers(0, len(pos), len(pos))]
        n = np.sort(neg[rng.integers(0, len(neg), len(neg))])
        below, not_above = np.searchsorted(n, p, "left"), np.searchsorted(n, p, "right")
        aucs[r] = (below + not_above).sum() / (2 * len(p) * len(n))
    return [float(v) for v in np.percentile(aucs, [2.5, 97.5])]


def _fmt(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.3f}"  # None / NaN: not applicable


def markdown_table(rows: dict[str, dict]) -> str:
    """The reference system's table layout: model, accuracy, harmful precision/recall/F1, ROC-AUC."""
    lines = ["| model | accuracy | precision (harmful) | recall (harmful) | F1 (harmful) | ROC-AUC | threshold | n |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m in rows.items():
        cells = [_fmt(m.get(k)) for k in ("accuracy", "precision", "recall", "f1", "roc_auc", "threshold")]
        lines.append(f"| {name} | {' | '.join(cells)} | {m.get('n_images', '-')} |")
    return "\n".join(lines)


def subclass_table(groups: dict[str, dict]) -> str:
    lines = ["| subclass | label | n | correct | mean P(harmful) | ROC-AUC vs all benign | 95 % interval |",
             "|---|---|---|---|---|---|---|"]
    for sub, g in groups.items():
        ci = g.get("roc_auc_95")
        lines.append(f"| {sub} | {g['label']} | {g['n']} | {g['correct']:.3f} | {g['mean_score']:.3f} | "
                     f"{_fmt(g.get('roc_auc'))} | {f'{ci[0]:.3f}-{ci[1]:.3f}' if ci else '-'} |")
    return "\n".join(lines)


def error_table(fine: dict[str, dict], top: int = 12) -> str:
    """Fine subclasses with the most misclassified images: where to look for hard negatives or missing data."""
    worst = sorted(fine.items(), key=lambda kv: (-round(kv[1]["n"] * (1 - kv[1]["correct"])), kv[0]))
    lines = ["| subclass | label | n | errors | correct |", "|---|---|---|---|---|"]
    for sub, g in worst[:top]:
        errors = round(g["n"] * (1 - g["correct"]))
        if errors:
            lines.append(f"| {sub} | {g['label']} | {g['n']} | {errors} | {g['correct']:.3f} |")
    return "\n".join(lines) if len(lines) > 2 else "no misclassified images"


def per_source(y_true: Sequence[int], scores: Sequence[float], sources: Sequence[str], threshold: float) -> dict:
    """Per source repository (manifest `source_repo`): harmful recall and benign false-alarm rate at `threshold`,
    so a threshold's promise can be checked where the photos came from."""
    y = np.asarray(y_true, dtype=int)
    s = np.asarray(scores, dtype=float)
    src = np.asarray(sources)
    out = {}
    for source in sorted(set(src.tolist()) - {""}):
        mine = src == source
        harmful, benign = mine & (y == 1), mine & (y == 0)
        out[source] = {
            "n_harmful": int(harmful.sum()), "n_benign": int(benign.sum()),
            "recall": float((s[harmful] >= threshold).mean()) if harmful.any() else None,
            "false_alarm_rate": float((s[benign] >= threshold).mean()) if benign.any() else None,
        }
    return out


def source_table(sources: dict, promised: float | None = None) -> str:
    head = "| source | harmful | recall | benign | false alarms |"
    lines = [head, "|---|---|---|---|---|"]
    for name, r in sources.items():
        lines.append(f"| {name} | {r['n_harmful']} | {_fmt(r['recall'])} | {r['n_benign']} | "
                     f"{_fmt(r['false_alarm_rate'])} |")
    if promised is not None:
        lines.append(f"\nPromised harmful recall: {promised:.2f}.")
    return "\n".join(lines)


def category_metrics(probs: np.ndarray, truth: Sequence[str | None], names: Sequence[str],
                     threshold: float = 0.5) -> dict:
    """Per harmful category: ROC-AUC of its photos against every other photo (benign and other categories),
    and recall/precision with its score >= `threshold`. `truth` is each photo's category ("" benign, None
    unknown: left out). Empty for a model without category scores."""
    if probs.ndim != 2 or probs.shape[1] != len(names):
        return {}
    keep = np.array([t is not None for t in truth])
    p, t = probs[keep], np.array([t for t in truth if t is not None])
    out = {}
    for j, name in enumerate(names):
        pos = t == name
        flagged = p[:, j] >= threshold
        out[name] = {
            "n": int(pos.sum()),
            "roc_auc": float(roc_auc_score(pos, p[:, j])) if 0 < pos.sum() < len(pos) else None,
            "recall": float(flagged[pos].mean()) if pos.any() else None,
            "precision": float(pos[flagged].mean()) if flagged.any() else None,
            "threshold": threshold,
        }
    return out


def category_table(categories: dict) -> str:
    lines = ["| category | n | ROC-AUC | recall | precision |", "|---|---|---|---|---|"]
    for name, c in categories.items():
        lines.append(f"| {name} | {c['n']} | {_fmt(c['roc_auc'])} | {_fmt(c['recall'])} | {_fmt(c['precision'])} |")
    return "\n".join(lines)
