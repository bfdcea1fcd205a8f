"""What a training run leaves behind for people: the model card, metrics files and the served threshold."""

from __future__ import annotations

import json
from pathlib import Path

from training.evaluation import REFERENCE, error_table, markdown_table, subclass_table


def write_metrics(out: Path, metrics: dict, groups: dict, fine: dict | None = None) -> None:
    """metrics.json keeps exactly METRIC_KEYS; the per-subclass breakdown goes to per_subclass.json."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "per_subclass.json").write_text(json.dumps({"groups": groups, "subclasses": fine or {}}, indent=2) + "\n")


def write_model_card(out: Path, name: str, meta: dict, test: dict, val: dict, groups: dict, fine: dict,
                     command: str, photos: str = "") -> None:
    ref = REFERENCE.get(name)
    rows = {f"{name} (this model, test split)": test}
    if ref:
        rows[f"{name} (reference system)"] = {**ref, "threshold": float("nan"), "n_images": "-"}
    cached = meta.get("stem_cache_reused") or []
    reused = f"; stem activations {', '.join(cached)} reused from an earlier run's cache" if cached else ""
    card = f"""# Model card: {name} harmful-image classifier

- **Version:** {meta['version']} · **labels:** benign / harmful (harmful is the positive class)
- **Initial weights:** {meta['weights']}
- **Decision threshold:** {meta['threshold']:.4f} on P(harmful), picked on the validation split for harmful
  recall ≥ {meta['target_recall']:.2f} (val recall {val['recall']:.3f}, val precision {val['precision']:.3f});
  written into `model-archive/config/{name}.yaml`, overridable with `MODERATION_THRESHOLD_{name.upper()}`.
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

### Per subclass (test split; `correct` is recall for harmful subclasses, 1 − false-alarm rate for benign ones)
{subclass_table(groups)}

### Where the errors are (fine subclasses, test split)
{error_table(fine)}

### Everyday photos from sources training never saw (all benign; `make data-unseen`)
{photos or "not run"}

## Known limitations
{meta['limitations']}
"""
    (out / "MODEL_CARD.md").write_text(card)
