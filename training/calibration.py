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
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from sklearn.metrics import roc_auc_score
from torch import nn

from handlers.registry import HARMFUL_INDEX, LABELS

N_CLASSES = len(LABELS)
OUT_OF_SOURCE_FILE = "out_of_source.npz"  # the folds' predictions, beside model.pt (`save_predictions`)


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


def benign_flagged(y: np.ndarray, p: np.ndarray, threshold: float) -> float | None:
    """The share of benign photos at or above `threshold`: what a recall promise costs (None: no benign photo)."""
    benign = y == 0
    return float((p[benign] >= threshold).mean()) if benign.any() else None


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
    # does a threshold picked out of source keep its promise on sources it was not picked on? (`nested_check`)
    nested: dict[str, list[dict]] = field(default_factory=dict)
    # the same predictions at the pair served by default (`at_shipped`; checkpoints before 1.3.0's operating
    # points could ship the out-of-source pick as their only pair: `thresholds_on` says which)
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
                        "review_recall": recall_at(y, p, review_threshold) or 0.0,
                        "benign_flagged": benign_flagged(y, p, threshold) or 0.0,
                        "review_benign_flagged": benign_flagged(y, p, review_threshold) or 0.0}
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


def nested_check(logits: np.ndarray, y: np.ndarray, fold_of: np.ndarray, target_recall: float) -> list[dict]:
    """Per fold: temperature and threshold fitted on the *other* folds' out-of-source predictions, then what the
    held-out fold's photos get at it (harmful recall, share of benign photos flagged). The pooled pick is made
    on every fold at once, so only this says whether an out-of-source promise holds on sources it never saw."""
    from training.thresholds import threshold_for_recall

    rows = []
    for k in sorted(set(fold_of.tolist())):
        rest, held = fold_of != k, fold_of == k
        if not (y[rest] == 1).any():
            continue
        temperature = fit_temperature(logits[rest], y[rest])
        p = calibrated(logits, temperature)
        threshold = threshold_for_recall(y[rest], p[rest], target_recall)
        rows.append({"fold": int(k), "threshold": threshold, "n_harmful": int((held & (y == 1)).sum()),
                     "n_benign": int((held & (y == 0)).sum()), "recall": recall_at(y[held], p[held], threshold),
                     "benign_flagged": benign_flagged(y[held], p[held], threshold)})
    return rows


def pooled(rows: list[dict]) -> dict[str, float]:
    """A nested check's folds taken together: held-out harmful recall and benign share flagged, photo-weighted."""
    harmful = sum(r["n_harmful"] for r in rows if r["recall"] is not None)
    benign = sum(r["n_benign"] for r in rows if r["benign_flagged"] is not None)
    return {"recall": sum(r["recall"] * r["n_harmful"] for r in rows if r["recall"] is not None) / max(harmful, 1),
            "benign_flagged": sum(r["benign_flagged"] * r["n_benign"] for r in rows
                                  if r["benign_flagged"] is not None) / max(benign, 1)}


def save_predictions(path: Path, logits: np.ndarray, y: np.ndarray, sources: np.ndarray,
                     folds: dict[str, int]) -> None:
    """The folds' out-of-source logits, kept beside the checkpoint: thresholds and the nested check can then be
    re-derived (`python -m training.calibration`) without the hour of fold training that made them."""
    names = sorted(set(sources.tolist()))
    np.savez_compressed(path, logits=logits.astype(np.float32), y=y.astype(np.int8),
                        source=np.searchsorted(names, sources).astype(np.int16), names=np.array(names),
                        fold=np.array([folds[n] for n in names], dtype=np.int8))


def load_predictions(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """What `save_predictions` wrote: logits, labels, per-photo source names and the source -> fold map."""
    with np.load(path) as blob:
        names = [str(n) for n in blob["names"]]
        return (blob["logits"], blob["y"].astype(int), np.array(names)[blob["source"]],
                dict(zip(names, (int(f) for f in blob["fold"]), strict=True)))


def out_of_source(logits: np.ndarray, y: np.ndarray, sources: np.ndarray, folds: dict[str, int],
                  target_recall: float, review_recall: float) -> OutOfSource:
    """Temperature, thresholds and the per-source report from the folds' out-of-source logits."""
    from training.thresholds import threshold_for_recall

    fold_of = np.array([folds[s] for s in sources.tolist()])
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
        nested={name: nested_check(logits, y, fold_of, recall)
                for name, recall in (("threshold", target_recall), ("review_threshold", review_recall))},
    )


def at_pair(logits: np.ndarray, y: np.ndarray, temperature: float, pair: tuple[float, float]) -> dict[str, dict]:
    """Harmful recall and the share of benign photos flagged at a (decision, review) pair that was *not* picked on
    these predictions (the validation pair), so the numbers are an honest out-of-source estimate; the
    out-of-source pair's own estimate is the nested check (`OutOfSource.nested`, `pooled`)."""
    p = calibrated(logits, temperature)
    return {name: {"recall": recall_at(y, p, threshold) or 0.0,
                   "benign_flagged": benign_flagged(y, p, threshold) or 0.0}
            for name, threshold in zip(("threshold", "review_threshold"), pair, strict=True)}


def main(argv: list[str] | None = None) -> None:
    """Re-derive the out-of-source operating point and its nested check from saved fold predictions."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("predictions", type=Path, help="out_of_source.npz beside a checkpoint (written by make train)")
    p.add_argument("--target-recall", type=float, default=0.90)
    p.add_argument("--review-recall", type=float, default=0.98)
    p.add_argument("--validation", type=float, nargs=2, metavar=("THRESHOLD", "REVIEW"),
                   help="also show what unseen sources get at this pair (the validation operating point)")
    args = p.parse_args(argv)
    logits, y, sources, folds = load_predictions(args.predictions)
    oos = out_of_source(logits, y, sources, folds, args.target_recall, args.review_recall)
    if args.validation:
        got = at_pair(logits, y, oos.temperature, tuple(args.validation))
        print(f"at the validation pair {args.validation[0]:.4f} / {args.validation[1]:.4f}: harmful recall "
              f"{got['threshold']['recall']:.3f}, benign flagged {got['threshold']['benign_flagged']:.3f} "
              f"(decision); {got['review_threshold']['recall']:.3f}, "
              f"{got['review_threshold']['benign_flagged']:.3f} (review)")
    print(f"{len(y)} out-of-source photos in {len(set(folds.values()))} folds: temperature {oos.temperature:.4f}, "
          f"AUC {oos.auc:.4f}; threshold {oos.threshold:.4f} (recall {args.target_recall}), review threshold "
          f"{oos.review_threshold:.4f} (recall {args.review_recall})")
    for name, rows in oos.nested.items():
        print(f"nested check of the {name.replace('_', ' ')} (picked on the other folds, applied to the held-out one):")
        for r in rows:
            benign = "-" if r["benign_flagged"] is None else f"{r['benign_flagged']:.3f}"
            recall = "-" if r["recall"] is None else f"{r['recall']:.3f}"
            print(f"  fold {r['fold']}: threshold {r['threshold']:.4f}, harmful recall {recall} of "
                  f"{r['n_harmful']}, benign flagged {benign} of {r['n_benign']}")
        total = pooled(rows)
        print(f"  all folds: harmful recall {total['recall']:.3f}, benign flagged {total['benign_flagged']:.3f}")


if __name__ == "__main__":
    main()
