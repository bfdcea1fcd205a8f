"""What a training run leaves behind for people: the model card, metrics files and the served threshold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from training.evaluation import REFERENCE, category_table, error_table, markdown_table, source_table, subclass_table

QUANTIZE_BEGIN, QUANTIZE_END = "<!-- make quantize: begin -->", "<!-- make quantize: end -->"

if TYPE_CHECKING:
    from training.evaluate import Evaluation


def write_metrics(out: Path, metrics: dict, groups: dict, fine: dict | None = None) -> None:
    """metrics.json keeps exactly METRIC_KEYS; the per-subclass breakdown goes to per_subclass.json."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "per_subclass.json").write_text(json.dumps({"groups": groups, "subclasses": fine or {}}, indent=2) + "\n")


def _threshold_lines(name: str, meta: dict) -> str:
    """How the default thresholds were picked (calibrated validation scores; checkpoints from before the operating
    points could ship the out-of-source pick instead) and what they keep out of source; runs without folds:
    validation only."""
    oos = meta.get("out_of_source")
    env = f"MODERATION_THRESHOLD_{name.upper()}"
    review = meta.get("review_threshold")
    if oos:
        val = meta.get("validation") or {}
        shipped = oos.get("shipped") or {}
        if oos.get("thresholds_on", "out-of-source") == "out-of-source":
            where = (f"out-of-source predictions ({len(set(oos['folds'].values()))} folds of training sources, "
                     f"{oos['n_images']} photos)")
        else:
            where = f"the validation split (val recall {val.get('recall', float('nan')):.3f})"
        text = (f"- **Decision threshold:** {meta['threshold']:.4f} on the calibrated P(harmful), picked on {where} "
                f"for harmful recall ≥ {oos['target_recall']:.2f}; on photos of sources the model never saw (the "
                f"folds' predictions) it catches {shipped.get('recall', float('nan')):.3f} at precision "
                f"{shipped.get('precision', float('nan')):.3f}; `{env}` overrides it.\n"
                f"- **Review threshold:** {review:.4f}, picked the same way for recall ≥ {oos['review_recall']:.2f} "
                f"(out of source: {shipped.get('review_recall', float('nan')):.3f}): `decision` is `block` at or "
                "above the decision threshold, `review` between the two, `allow` below; "
                f"`MODERATION_REVIEW_THRESHOLD_{name.upper()}` overrides it.\n"
                f"- **Calibration:** temperature {oos['temperature']:.3f} (folded into the head), fitted on the "
                f"out-of-source logits: expected calibration error {oos['ece_before']:.3f} → {oos['ece_after']:.3f} "
                "there, so `harmful_score` reads as a probability on photos from unseen sources (in-source photos "
                "score more confidently than that).")
    else:
        val = meta.get("validation") or {}
        text = (f"- **Decision threshold:** {meta['threshold']:.4f} on P(harmful), picked on the validation split "
                f"for harmful recall ≥ {meta['target_recall']:.2f} (val recall {val.get('recall', float('nan')):.3f});"
                f" `{env}` overrides it.")
        if review is not None:
            text += f"\n- **Review threshold:** {review:.4f} (validation, recall ≥ {meta.get('review_recall')})."
    return text + f"\n  Both are written into `model-archive/config/{name}.yaml`."


def _out_of_source_section(meta: dict, result: Evaluation) -> str:
    oos = meta.get("out_of_source")
    if not oos:
        return ""
    rows = ["| held-out source | fold | ROC-AUC (out of source) | recall at the shipped threshold (out of source) | "
            "recall at the shipped threshold (test split) |", "|---|---|---|---|---|"]
    for source, auc in oos["source_auc"].items():
        test = result.sources.get(source, {}).get("recall")
        oof = oos["per_source_recall"].get(source)
        rows.append(f"| {source} | {oos['folds'].get(source, '-')} | {auc:.3f} | "
                    f"{'-' if oof is None else f'{oof:.3f}'} | {'-' if test is None else f'{test:.3f}'} |")
    achieved = result.metrics["recall"]
    r90 = "-" if result.recall_at_90_precision is None else f"{result.recall_at_90_precision:.3f}"
    shipped = oos.get("shipped") or {}
    on_val = oos.get("thresholds_on") == "validation"
    return f"""
## A threshold that keeps its promise
Promised harmful recall **{oos['target_recall']:.2f}**, picked on the {"validation split" if on_val else
"folds' out-of-source predictions"}. Achieved on the held-out test split: **{achieved:.3f}** (precision
{result.metrics['precision']:.3f}; recall at 90 % precision, best threshold: {r90}); on photos of sources the
model never saw (the folds): **{shipped.get('recall', float('nan')):.3f}** (precision
{shipped.get('precision', float('nan')):.3f}), per source in the table. Out of source: ROC-AUC {oos['auc']:.4f},
leave-sources-out mean AUC {oos['source_auc_mean']:.4f}, worst source {oos['worst_source']}
{oos['source_auc_worst']:.4f}, recall at 90 % precision {oos['recall_at_90_precision']:.3f}; the threshold that
would promise {oos['target_recall']:.2f} there is {oos['threshold']:.4f} (`operating_point: out_of_source`). Most
folds hold out a whole kind of photo (all handguns, all everyday-people photos), which is harsher than a new
source of a kind the model knows; the test split shares its sources with training. A source's AUC compares its
photos with the other class's out-of-source photos (most sources hold one class).

{chr(10).join(rows)}
"""


def _operating_points_section(out: Path, name: str, meta: dict, result: Evaluation) -> str:
    """Both threshold pairs side by side: what each promises, and where it keeps the promise (needs the folds'
    predictions, `out_of_source.npz`, which `make train` saves beside the checkpoint)."""
    from training.calibration import OUT_OF_SOURCE_FILE, at_pair, load_predictions, out_of_source, pooled
    from training.evaluation import compute_metrics

    oos, path = meta.get("out_of_source"), out / OUT_OF_SOURCE_FILE
    if not oos or not path.exists() or not len(result.labels):
        return ""
    logits, y, sources, folds = load_predictions(path)
    pairs = {"validation": (meta["threshold"], meta["review_threshold"]),
             "out_of_source": (oos["threshold"], oos["review_threshold"])}
    # the checkpoint's own nested check; re-run from the saved predictions for checkpoints older than it (1.3.0)
    nested = oos.get("nested") or out_of_source(logits, y, sources, folds, oos["target_recall"],
                                                oos["review_recall"]).nested
    unseen = {"validation": at_pair(logits, y, oos["temperature"], pairs["validation"]),
              "out_of_source": {name: pooled(rows) for name, rows in nested.items()}}
    labels, scores = result.labels, result.scores
    rows = ["| operating point | picked on | decision / review threshold | test split: recall, benign flagged "
            "(decision); recall (review) | unseen sources: recall, benign flagged (decision); recall, benign "
            "flagged (review) |", "|---|---|---|---|---|"]
    where = {"validation": "calibrated validation split (served by default)",
             "out_of_source": "the folds' out-of-source predictions"}
    for point, (decision, review) in pairs.items():
        test, test_review = compute_metrics(labels, scores, decision), compute_metrics(labels, scores, review)
        cm = test["confusion_matrix"]
        u, ur = unseen[point]["threshold"], unseen[point]["review_threshold"]
        rows.append(f"| `{point}` | {where[point]} | {decision:.4f} / {review:.4f} | {test['recall']:.3f}, "
                    f"{cm['fp'] / max(cm['fp'] + cm['tn'], 1):.3f}; {test_review['recall']:.3f} | "
                    f"{u['recall']:.3f}, {u['benign_flagged']:.3f}; {ur['recall']:.3f}, "
                    f"{ur['benign_flagged']:.3f} |")
    return f"""
## Operating points
Both pairs of thresholds ship in `model-archive/config/{name}.yaml`; `operating_point` (env
`MODERATION_OPERATING_POINT_{name.upper()}`, chart `models.{name}.operatingPoint`) says which one is served.
Each promises harmful recall {oos['target_recall']:.2f} at the decision threshold and {oos['review_recall']:.2f}
at the review threshold, on different photos: `validation` on photos like the training sources' (the test split
keeps it), `out_of_source` on photos of sources the model never saw. Unseen sources are the
{len(set(folds.values()))} source folds ({len(y)} photos), each photo scored by the fold model that never saw its
source; `out_of_source` is checked nested (thresholds picked on the other folds, applied to the held-out one),
so no photo judges a threshold picked on it. Fp32 weights here (the int8 graph's pair: the section of `make
quantize`). Reproduce the unseen-source columns: `python -m training.calibration models/{name}/{OUT_OF_SOURCE_FILE}
--validation {pairs['validation'][0]:.6f} {pairs['validation'][1]:.6f}`; the test columns: `python -m
training.evaluate --model {name} --split test --checkpoint models/{name}/model.pt --out /tmp/{name}-op --threshold
T`, T each threshold of the table.

{chr(10).join(rows)}

`out_of_source` keeps its promise where `validation` does not, and pays for it in benign photos flagged: the
model separates photos of unseen sources far less well (ROC-AUC {oos['auc']:.3f} there), so recall that high
there flags much of what resembles the held-out harmful kinds. `validation` is the default for that reason;
`out_of_source` suits a deployment whose photos the training sources do not resemble, with reviewers for the
extra flags.
"""


def write_model_card(out: Path, name: str, meta: dict, result: Evaluation, command: str, photos: str = "") -> None:
    test = result.metrics
    ref = REFERENCE.get(name)
    rows = {f"{name} (this model, test split)": test}
    if ref:
        rows[f"{name} (reference system)"] = {**ref, "threshold": float("nan"), "n_images": "-"}
    cached = meta.get("stem_cache_reused") or []
    reused = f"; stem activations {', '.join(cached)} reused from an earlier run's cache" if cached else ""
    categories = (f"\n### Harmful categories (test split; score ≥ 0.5; AUC against every other photo)\n"
                  f"{category_table(result.categories)}\n") if result.categories else ""
    sources = f"\n### Per source (test split)\n{source_table(result.sources)}\n" if result.sources else ""
    card = f"""# Model card: {name} harmful-image classifier

- **Version:** {meta['version']} · **labels:** benign / harmful (harmful is the positive class)
  {"· **categories:** " + ", ".join(meta["categories"]) if result.categories else ""}
- **Initial weights:** {meta['weights']}
{_threshold_lines(name, meta)}
- **Training wall time:** {meta['wall_time_s'] / 60:.1f} min on this 2-core CPU (shared with other jobs){reused}.
- **Reproduce training:** `{command}`
- **Reproduce the held-out numbers below** (from the committed checkpoint, through the server's decoding and
  preprocessing): `make evaluate MODEL={name} SPLIT=test CHECKPOINT=models/{name}/model.pt OUT=/tmp/{name}-test`

## Data
{meta['data']}

## Recipe
{meta['recipe']}

## Held-out test split
Plots: `roc_curve.png`, `precision_recall_curve.png`, `confusion_matrix.png` beside this card.

{markdown_table(rows)}

Confusion matrix (test): {test['confusion_matrix']}
{_out_of_source_section(meta, result)}{_operating_points_section(out, name, meta, result)}{categories}
### Per subclass (test split; `correct` is recall for harmful subclasses, 1 − false-alarm rate for benign ones)
{subclass_table(result.groups)}

### Where the errors are (fine subclasses, test split)
{error_table(result.fine)}
{sources}
### Everyday photos from sources training never saw (all benign; `make data-unseen`)
{photos or "not run"}

## Known limitations
{meta['limitations']}
"""
    path = out / "MODEL_CARD.md"
    previous = path.read_text() if path.exists() else ""
    if QUANTIZE_BEGIN in previous and QUANTIZE_END in previous:  # `make quantize`'s own section stays
        card = card.rstrip("\n") + "\n\n" + previous[previous.index(QUANTIZE_BEGIN):previous.index(QUANTIZE_END)
                                                     + len(QUANTIZE_END)] + "\n"
    path.write_text(card)
