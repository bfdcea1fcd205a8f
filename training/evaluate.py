"""Evaluate a checkpoint (or a built .mar, through the graph it serves) on every image of a class-folder data set.

    python -m training.evaluate --model mobilenet_v2 --data DIR --out DIR [--checkpoint PATH | --mar PATH]
        [--split test]   # with a manifest.csv or train/val/test folders: only that split

Writes OUT/metrics.json (exactly the keys of training.evaluation.METRIC_KEYS), OUT/per_subclass.json,
ROC / precision-recall / confusion-matrix PNGs, and prints the reference-style table. Unreadable images
are reported and skipped, exactly as the server would refuse them. A .mar is scored the way its handler
config serves it: its backend (eager weights, fp32 or int8 ONNX graph) and that backend's threshold.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from tqdm import tqdm

from handlers.model_io import probabilities
from handlers.registry import CATEGORIES, LABELS, MODEL_NAMES, build_model, eval_transform, load_checkpoint
from handlers.scorer import Scorer as ServedScorer
from handlers.settings import OPERATING_POINTS
from training.calibration import recall_at_precision
from training.data import SUBCLASS_CATEGORIES, ClassMap, Sample, load_dataset, subclass_group
from training.evaluation import (
    REFERENCE,
    category_metrics,
    category_table,
    compute_metrics,
    error_table,
    markdown_table,
    per_source,
    per_subclass,
    source_table,
    subclass_table,
)
from training.features import ImageDataset, skip_unreadable
from training.report import write_metrics

ROOT = Path(__file__).resolve().parent.parent
HARMFUL = LABELS.index("harmful")


@dataclass(frozen=True)
class Scorer:
    """How one served model turns images into P(harmful): per-image transform, batch forward, threshold."""

    transform: Callable
    forward: Callable[[torch.Tensor], np.ndarray]  # (n, 1 + categories): handlers.model_io.probabilities
    threshold: float
    backend: str


def eager(model: torch.nn.Module, threshold: float) -> Scorer:
    model.eval()

    def forward(x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return probabilities(model(x).numpy())

    return Scorer(eval_transform(), forward, threshold, "eager")


def served(name: str, archive: Path, workdir: Path, operating_point: str | None = None) -> Scorer:
    """A .mar scored by the server's own scorer (handlers.scorer): its backend, thresholds, threads, pixels and
    forward, so `--mar` measures exactly what the handler would answer (at `operating_point` when given, as
    MODERATION_OPERATING_POINT would set it on the server)."""
    with zipfile.ZipFile(archive) as z:
        z.extractall(workdir)
    config = yaml.safe_load((workdir / f"{name}.yaml").read_text())
    version = json.loads((workdir / "MAR-INF" / "MANIFEST.json").read_text())["model"].get("modelVersion", "1.0")
    env = {"MODERATION_OPERATING_POINT": operating_point} if operating_point else {}
    scorer = ServedScorer(name, workdir, config.get("handler") or {}, str(version), env=env)

    def transform(image: Image.Image) -> torch.Tensor:
        pixels = scorer.to_pixels(image)  # uint8: HWC numpy for the ONNX graphs, CHW tensor for eager weights
        return torch.from_numpy(pixels.copy()) if isinstance(pixels, np.ndarray) else pixels  # PIL-backed: read-only

    def forward(x: torch.Tensor) -> np.ndarray:
        return scorer.scores([p.numpy() for p in x] if scorer.onnx else list(x))

    return Scorer(transform, forward, scorer.settings.threshold, scorer.settings.backend)


def load_scorer(name: str, checkpoint: Path | None, mar: Path | None, workdir: Path,
                operating_point: str | None = None) -> Scorer:
    """What is served: a .mar through the server's scorer, else the checkpoint (eager) with the threshold from
    its meta or the model config."""
    if mar is not None:
        return served(name, mar, workdir, operating_point)
    model = build_model(name)
    path = checkpoint or ROOT / "models" / name / "model.pt"
    meta = load_checkpoint(model, str(path))
    threshold = meta.get("threshold")
    if threshold is None:
        config = yaml.safe_load((ROOT / "model-archive" / "config" / f"{name}.yaml").read_text())
        threshold = config["handler"]["threshold"]
    return eager(model, float(threshold))


def plot(out: Path, y: np.ndarray, s: np.ndarray, metrics: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay

    warnings.filterwarnings("ignore", module="sklearn")  # a one-class set (e.g. benign only) still gets its plots
    for name, draw in (("roc_curve.png", RocCurveDisplay.from_predictions),
                       ("precision_recall_curve.png", PrecisionRecallDisplay.from_predictions)):
        fig, ax = plt.subplots(figsize=(5, 5))
        draw(y, s, ax=ax, name=title, pos_label=1)
        ax.set_title(f"{title} ({name.split('.')[0].replace('_', ' ')})")
        fig.savefig(out / name, dpi=100, bbox_inches="tight")
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay.from_predictions(y, (s >= metrics["threshold"]).astype(int), display_labels=list(LABELS),
                                            ax=ax, colorbar=False)
    ax.set_title(f"{title} @ threshold {metrics['threshold']:.3f}")
    fig.savefig(out / "confusion_matrix.png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=MODEL_NAMES)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", type=Path)
    src.add_argument("--mar", type=Path)
    p.add_argument("--split", choices=("train", "val", "test"), help="only this split (manifest or split folders)")
    p.add_argument("--threshold", type=float, help="override the served threshold")
    p.add_argument("--operating-point", choices=OPERATING_POINTS,
                   help="with --mar: serve this pair of the archive's thresholds (default: the archive's own)")
    p.add_argument("--harmful-classes", default="harmful")
    p.add_argument("--benign-classes", default="benign")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="split seed for class folders without manifest/split folders")
    args = p.parse_args(argv)
    if args.operating_point and not args.mar:
        p.error("--operating-point needs --mar (the pairs live in the archive's model config)")

    classes = ClassMap(tuple(args.harmful_classes.split(",")), tuple(args.benign_classes.split(",")))
    samples = load_dataset(args.data, classes, seed=args.seed)
    if args.split:
        samples = [s for s in samples if s.split == args.split]
    with tempfile.TemporaryDirectory() as tmp:
        scorer = load_scorer(args.model, args.checkpoint, args.mar, Path(tmp), args.operating_point)
        name = f"{args.model} {scorer.backend} ({args.data.name}{'/' + args.split if args.split else ''})"
        result = evaluate(scorer, args.model, samples, args.out, name, args.batch_size, args.threshold)
    return result.metrics


@dataclass(frozen=True)
class Evaluation:
    """Everything `evaluate` measured, for the model card: overall, per subclass group and fine subclass, per
    source, per harmful category (empty for a model without a category head)."""

    metrics: dict
    groups: dict
    fine: dict
    sources: dict
    categories: dict
    recall_at_90_precision: float | None = None
    # per readable photo: label and P(harmful), so a card can show other thresholds (the operating points)
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))


def evaluate(scorer: Scorer, model_name: str, samples: list[Sample], out: Path, name: str, batch_size: int = 32,
             threshold: float | None = None) -> Evaluation:
    """Score `samples` through the whole model as the server would; write metrics, breakdowns and plots to `out`.
    `threshold` overrides the scorer's (the served one)."""
    threshold = scorer.threshold if threshold is None else threshold
    loader = torch.utils.data.DataLoader(ImageDataset(samples, scorer.transform), batch_size=batch_size,
                                         num_workers=1, collate_fn=skip_unreadable)
    probs: np.ndarray | None = None
    for idx, x in tqdm(loader, desc=f"evaluate {model_name} ({scorer.backend})", unit="batch"):
        if len(idx):
            batch = scorer.forward(x)
            if probs is None:
                probs = np.full((len(samples), batch.shape[1]), np.nan)
            probs[idx.numpy()] = batch
    if probs is None:
        probs = np.full((len(samples), 1), np.nan)
    readable = ~np.isnan(probs[:, 0])
    for i in np.flatnonzero(~readable):
        print(f"skipped unreadable image: {samples[i].path}")
    kept = [s for s, ok in zip(samples, readable, strict=True) if ok]
    y = np.array([s.label for s in kept])
    s = probs[readable, 0]
    metrics = compute_metrics(y, s, threshold)
    groups = per_subclass(y, s, [subclass_group(k.subclass) for k in kept], threshold)
    fine = per_subclass(y, s, [k.subclass for k in kept], threshold)
    sources = per_source(y, s, [k.source for k in kept], threshold)
    categories = category_metrics(probs[readable, 1:], [SUBCLASS_CATEGORIES.get(k.subclass) if k.label == HARMFUL
                                                        else "" for k in kept], CATEGORIES)
    (out / "per_source.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "per_source.json").write_text(json.dumps(sources, indent=2) + "\n")
    if categories:
        (out / "categories.json").write_text(json.dumps(categories, indent=2) + "\n")
    write_metrics(out, metrics, groups, fine)
    plot(out, y, s, metrics, model_name)
    rows = {name: metrics}
    if model_name in REFERENCE:
        rows[f"{model_name} (reference system)"] = {**REFERENCE[model_name], "threshold": float("nan")}
    print(markdown_table(rows))
    print(subclass_table(groups))
    print(error_table(fine))
    if any(sources):
        print(source_table(sources))
    if categories:
        print(category_table(categories))
    print(f"skipped {int((~readable).sum())} unreadable; wrote {out}/metrics.json, per_subclass.json and plots")
    r90 = recall_at_precision(y, s, 0.90) if len(set(y.tolist())) == 2 else None
    if r90 is not None:
        print(f"harmful recall at 90 % precision (best threshold on this set): {r90:.3f}")
    return Evaluation(metrics, groups, fine, sources, categories, r90, y, s)

if __name__ == "__main__":
    main()
