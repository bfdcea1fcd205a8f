"""Scores that mean probabilities, and thresholds that keep their promise on photos from unseen sources.

A threshold picked on the validation split of the sources a model was trained on promises more recall than it
delivers elsewhere (the shipped 1.0 promised 0.90 and gave 0.83). So the threshold and the calibration are fitted
on *out-of-source* predictions: the training sources (manifest `source_repo`) are dealt into folds, a model is
trained by the same recipe on all folds but one, and scores the held-out fold's photos, whose sources it has never
seen. Temperature scaling on those logits turns the shipped model's `harmful_score` into a probability (folded
into its head, so every backend and graph serves it), and the decision and review thresholds are the highest
scores that still reach their target recall on the out-of-source predictions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from sklearn.metrics import roc_auc_score
from torch import nn

from handlers.registry import HARMFUL_INDEX, LABELS

N_CLASSES = len(LABELS)


def source_folds(sources: Sequence[str], k: int) -> dict[str, int]:
    """Deal the sources into `k` folds of similar image counts (largest first, each into the lightest fold);
    deterministic, so every run holds out the same sources together."""
    counts = Counter(sources)
    load = [0] * k
    fold: dict[str, int] = {}
    for source, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        f = min(range(k), key=lambda i: (load[i], i))
        fold[source] = f
        load[f] += n
    return fold


def logit_margin(logits: np.ndarray) -> np.ndarray:
    """harmful minus benign class logit: softmax(logits / T)[harmful] == sigmoid(margin / T)."""
    return logits[:, HARMFUL_INDEX] - logits[:, 1 - HARMFUL_INDEX]


def calibrated(logits: np.ndarray, temperature: float) -> np.ndarray:
    """P(harmful) after temperature scaling of the class logits."""
    return 1.0 / (1.0 + np.exp(-logit_margin(logits) / temperature))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of the out-of-source labels (one parameter: it
    keeps the ranking, so AUC and the recall at any matching threshold are unchanged)."""
    margin = logit_margin(logits).astype(np.float64)
    sign = np.where(np.asarray(y) == 1, 1.0, -1.0)

    def nll(log_t: float) -> float:
        return float(np.logaddexp(0.0, -sign * margin / np.exp(log_t)).mean())

    return float(np.exp(minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded").x))


def fold_temperature_into_head(head: nn.Linear, temperature: float) -> None:
    """Divide the class rows of the head by T: the model itself then outputs calibrated class logits (category
    rows unchanged), so TorchServe, the KServe runtime, the ONNX and int8 graphs all serve calibrated scores."""
    with torch.no_grad():
        head.weight[:N_CLASSES] /= temperature
        head.bias[:N_CLASSES] /= temperature


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Mean |observed harmful share - mean P(harmful)| over equal-width score bins, weighted by bin size."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(y[mask].mean() - p[mask].mean())
    return float(total)


def source_auc(y: np.ndarray, p: np.ndarray, sources: np.ndarray) -> dict[str, float]:
    """Per held-out source: ROC-AUC of its photos against the other class's out-of-source photos of every source
    (most sources hold one class only), so a source scores low when its photos cross the other class's scores."""
    out = {}
    for source in sorted(set(sources.tolist())):
        mine = sources == source
        pos, neg = mine & (y == 1), mine & (y == 0)
        if not neg.any():
            neg = y == 0
        if not pos.any():
            pos = y == 1
        keep = pos | neg
        out[source] = float(roc_auc_score(y[keep], p[keep]))
    return out


def recall_at(y: np.ndarray, p: np.ndarray, threshold: float) -> float | None:
    harmful = y == 1
    return float((p[harmful] >= threshold).mean()) if harmful.any() else None


@dataclass
class OutOfSource:
    """What the folds say about photos from unseen sources; goes into the checkpoint meta and the model card."""

    folds: dict[str, int]
    temperature: float
    threshold: float
    target_recall: float
    review_threshold: float
    review_recall: float
    auc: float
    source_auc: dict[str, float]
    ece_before: float
    ece_after: float
    precision_at_threshold: float
    recall_at_90_precision: float
    n_images: int
    per_source_recall: dict[str, float] = field(default_factory=dict)
    # the same predictions at the thresholds actually shipped (picked here, or on validation: `thresholds_on`)
    thresholds_on: str = "out-of-source"
    shipped: dict[str, float] = field(default_factory=dict)

    def at_shipped(self, logits: np.ndarray, y: np.ndarray, sources: np.ndarray, threshold: float,
                   review_threshold: float, picked_on: str) -> None:
        """Record what the out-of-source photos get at the shipped thresholds, overall and per source."""
        p = calibrated(logits, self.temperature)
        flagged = p >= threshold
        self.thresholds_on = picked_on
        self.shipped = {"threshold": threshold, "review_threshold": review_threshold,
                        "recall": recall_at(y, p, threshold) or 0.0,
                        "precision": float((y[flagged] == 1).mean()) if flagged.any() else 0.0,
                        "review_recall": recall_at(y, p, review_threshold) or 0.0}
        self.per_source_recall = {s: r for s in sorted(set(sources.tolist()))
                                  if (r := recall_at(y[sources == s], p[sources == s], threshold)) is not None}

    def summary(self) -> dict:
        values = list(self.source_auc.values())
        return asdict(self) | {"source_auc_mean": float(np.mean(values)), "source_auc_worst": float(np.min(values)),
                               "worst_source": min(self.source_auc, key=self.source_auc.__getitem__)}


def recall_at_precision(y: np.ndarray, p: np.ndarray, precision: float) -> float:
    """The highest recall among thresholds whose precision is at least `precision` (0 if none)."""
    order = np.argsort(-p, kind="stable")
    tp = np.cumsum(y[order] == 1)
    flagged = np.arange(1, len(p) + 1)
    ok = tp / flagged >= precision
    return float(tp[ok].max() / max((y == 1).sum(), 1)) if ok.any() else 0.0


def out_of_source(logits: np.ndarray, y: np.ndarray, sources: np.ndarray, folds: dict[str, int],
                  target_recall: float, review_recall: float) -> OutOfSource:
    """Temperature, thresholds and the per-source report from the folds' out-of-source logits."""
    from training.thresholds import threshold_for_recall

    temperature = fit_temperature(logits, y)
    p_raw = calibrated(logits, 1.0)
    p = calibrated(logits, temperature)
    threshold = threshold_for_recall(y, p, target_recall)
    review = min(threshold_for_recall(y, p, review_recall), threshold)
    flagged = p >= threshold
    return OutOfSource(
        folds=folds, temperature=temperature, threshold=threshold, target_recall=target_recall,
        review_threshold=review, review_recall=review_recall, auc=float(roc_auc_score(y, p)),
        source_auc=source_auc(y, p, sources), ece_before=expected_calibration_error(y, p_raw),
        ece_after=expected_calibration_error(y, p),
        precision_at_threshold=float((y[flagged] == 1).mean()) if flagged.any() else 0.0,
        recall_at_90_precision=recall_at_precision(y, p, 0.90), n_images=int(len(y)),
        per_source_recall={s: r for s in sorted(set(sources.tolist()))
                           if (r := recall_at(y[sources == s], p[sources == s], threshold)) is not None},
    )
