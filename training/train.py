"""Fine-tune a registry model (harmful vs benign) from ImageNet weights; ship checkpoint, threshold, card.

    python -m training.train --model mobilenet_v2 --data ../shared/data

The frozen stem runs once per image and augmented view (cached, resumable); the trunk (last blocks +
head) is trained on those activations with class- and subclass-balanced weights and early stopping on
validation ROC-AUC. The threshold is then picked on validation for the target harmful recall.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from handlers.registry import CATEGORIES, LABELS, MODEL_NAMES, build_model, eval_transform, load_checkpoint
from handlers.settings import REVIEW_THRESHOLD_KEY, threshold_keys
from training.calibration import (
    OUT_OF_SOURCE_FILE,
    fold_temperature_into_head,
    out_of_source,
    save_predictions,
    source_folds,
)
from training.data import ClassMap, Sample, by_split, category_targets, load_dataset, subclass_group
from training.evaluate import eager, evaluate
from training.evaluation import compute_metrics
from training.features import DEFAULT_TUNE_FROM, ImageDataset, cache_stem, skip_unreadable, split_model
from training.finetune import (
    N_CLASSES,
    ProbeResult,
    Targets,
    auc,
    category_loss,
    choose_alpha,
    interpolate,
    linear_probe,
    logits,
    scores,
    split_head,
)
from training.report import write_model_card
from training.thresholds import drop_threshold, threshold_for_recall, write_threshold
from training.unseen import photo_table, score_photos
from training.weights import init_weights, recalibrate_batchnorm

ROOT = Path(__file__).resolve().parent.parent
HARMFUL = LABELS.index("harmful")
WISE_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def sample_weights(samples: list[Sample]) -> torch.Tensor:
    """Balance classes, and within a class damp big subclasses (1/sqrt(n)) so rare sources still count."""
    groups = Counter((s.label, subclass_group(s.subclass)) for s in samples)
    w = torch.tensor([1.0 / math.sqrt(groups[(s.label, subclass_group(s.subclass))]) for s in samples])
    labels = torch.tensor([s.label for s in samples])
    for c in (0, 1):
        mask = labels == c
        w[mask] *= 0.5 * len(samples) / w[mask].sum()
    return w


def _freeze_batchnorm(module: nn.Module) -> None:
    """Keep ImageNet BatchNorm statistics: cached mini-batches of augmented views are too small to re-estimate them."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


def calibrate_batchnorm(model: nn.Module, train: list[Sample], args: argparse.Namespace) -> int:
    """Data-dependent BatchNorm statistics for a randomly initialised model (see weights.recalibrate_batchnorm)."""
    rng = np.random.default_rng(args.seed)
    chosen = [train[i] for i in sorted(rng.choice(len(train), min(args.bn_calibration, len(train)), replace=False))]
    loader = DataLoader(ImageDataset(chosen, eval_transform(), args.seed), batch_size=32, num_workers=1,
                        collate_fn=skip_unreadable)
    batches = (x for _, x in tqdm(loader, desc="BatchNorm statistics", unit="batch") if len(x))
    return recalibrate_batchnorm(model, batches)


def recipe(args: argparse.Namespace, tune_from: str, probe: ProbeResult, best: dict, alpha: float,
           wise: dict[float, float], head_only: bool) -> str:
    """The training recipe in words, for the checkpoint meta and the model card."""
    text = (f"Stem frozen before `{tune_from}` (BatchNorm statistics frozen throughout). Stem activations cached "
            f"for 1 clean + {args.views} augmented views per training image (random resized crop 0.45-1, "
            "horizontal flip, and for both classes alike: vertical flip 10%, quarter turns 20%, tilts up to 20 "
            "degrees with black corners 15%; colour jitter, 10% grayscale). Class-balanced sample weights, damped "
            "1/sqrt(subclass size) within a class so rare sources and hard negatives count. Head: 2 class logits "
            f"(softmax) + {len(CATEGORIES)} category logits ({', '.join(CATEGORIES)}; sigmoid, BCE weight "
            f"{args.category_weight}, targets from the harmful subclasses, zero for benign). 1) Linear probe: "
            f"weighted L2 logistic regression (L-BFGS) on the frozen pooled features, L2 {probe.l2:g} picked on "
            f"validation AUC ({probe.val_auc:.4f}).")
    if not head_only and args.epochs:
        text += (f" 2) Fine-tune from `{tune_from}` on, starting from the probe's head: AdamW lr {args.lr} one-cycle, "
                 f"weight decay {args.weight_decay}, batch {args.batch_size}, label smoothing 0.05, up to "
                 f"{args.epochs} epochs, early stopping on validation ROC-AUC (best epoch {best['epoch'] + 1}, "
                 f"val AUC {best['auc']:.4f}). 3) Weight-space interpolation probe -> fine-tuned: val AUC by alpha "
                 + ", ".join(f"{a:g}: {v:.4f}" for a, v in wise.items())
                 + f"; kept alpha {alpha:g}, the closest to the probe within {args.wise_tolerance} AUC of the best.")
    if args.source_folds > 1:
        text += (f" 4) Out-of-source calibration: the training sources dealt into {args.source_folds} folds; per "
                 f"fold, steps 1-3 ({args.fold_epochs} fine-tuning epoch(s), clean views, the same alpha) on the "
                 "other folds, then the held-out fold's train and val photos scored; temperature scaling fitted on "
                 "those logits and folded into the class rows of the head; decision and review thresholds picked "
                 "twice: on the calibrated validation scores (served by default) and on the calibrated "
                 "out-of-source scores (operating point out_of_source).")
    return text + f" Seed {args.seed}; deterministic algorithms on."


def fine_tune(trunk: nn.Module, x_train: torch.Tensor, t_train: Targets, x_val: torch.Tensor, y_val: np.ndarray,
              args: argparse.Namespace, cache: Path | None, epochs: int | None = None, desc: str = "") -> dict:
    """Train the trunk (from the linear-probe head) with early stopping on val AUC; resumable per epoch when a
    `cache` folder is given. Loss: class cross-entropy (label smoothing) + the categories' BCE where known."""
    epochs = args.epochs if epochs is None else epochs
    trainable = [q for q in trunk.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay)
    steps = epochs * math.ceil(len(x_train) / args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps, pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss(reduction="none", label_smoothing=0.05)
    settings = f"{args.lr}|{args.weight_decay}|{epochs}|{args.batch_size}|{args.views}|{args.seed}|categories"
    state_file = cache / f"finetune-state-{hashlib.sha1(settings.encode()).hexdigest()[:8]}.pt" if cache else None
    best: dict = {"auc": -1.0, "epoch": -1, "trunk": None}
    start_epoch = 0
    if state_file is not None and state_file.exists():  # resume an interrupted run
        saved = torch.load(state_file, weights_only=False)
        trunk.load_state_dict(saved["trunk"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        best, start_epoch = saved["best"], saved["epoch"] + 1
        print(f"resumed after epoch {saved['epoch'] + 1} (best val AUC {best['auc']:.4f})", flush=True)
    generator = torch.Generator().manual_seed(args.seed)
    for _ in range(start_epoch):
        torch.randperm(len(x_train), generator=generator)
    for epoch in range(start_epoch, epochs):
        trunk.train()
        _freeze_batchnorm(trunk)
        order = torch.randperm(len(x_train), generator=generator)
        seen = correct = 0
        total = 0.0
        bar = tqdm(range(0, len(order), args.batch_size), desc=f"{desc}epoch {epoch + 1}/{epochs}", unit="batch")
        for start in bar:
            b = order[start:start + args.batch_size]
            t = t_train[b]
            logits = trunk(x_train[b].float())
            per_row = loss_fn(logits[:, :N_CLASSES], t.y) + args.category_weight * category_loss(
                logits, t.categories, t.known)
            loss = (per_row * t.w).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            seen += len(b)
            total += loss.item() * len(b)
            correct += (logits[:, :N_CLASSES].argmax(1) == t.y).sum().item()
            bar.set_postfix(loss=f"{total / seen:.4f}", acc=f"{correct / seen:.3f}")
        val_auc = auc(y_val, scores(trunk, x_val))
        print(f"{desc}epoch {epoch + 1}: train loss {total / seen:.4f} acc {correct / seen:.3f} | "
              f"val AUC {val_auc:.4f}", flush=True)
        if val_auc > best["auc"]:
            best = {"auc": val_auc, "epoch": epoch, "trunk": {k: v.clone() for k, v in trunk.state_dict().items()}}
        if state_file is not None:
            torch.save({"trunk": trunk.state_dict(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "best": best, "epoch": epoch}, state_file)
        if epoch - best["epoch"] >= args.patience:
            print(f"early stop: no val AUC gain for {args.patience} epochs", flush=True)
            break
    trunk.load_state_dict(best["trunk"])
    return best


def targets(samples: list[Sample], rows: torch.Tensor) -> Targets:
    """Training targets of the cached rows (`rows` index `samples`)."""
    cats = [category_targets(s) for s in samples]
    return Targets(torch.tensor([s.label for s in samples])[rows],
                   torch.tensor([c for c, _ in cats])[rows], torch.tensor([float(k) for _, k in cats])[rows],
                   sample_weights(samples)[rows])


def cross_fit(trunk: nn.Module, start: dict[str, torch.Tensor], alpha: float, train: list[Sample],
              val: list[Sample], clean: tuple[torch.Tensor, torch.Tensor], val_stem: tuple[torch.Tensor, torch.Tensor],
              args: argparse.Namespace, cache: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """Out-of-source logits of every train and val photo: per fold of sources, the recipe (probe, fine-tune,
    interpolation by the shipped `alpha`) on the other folds' clean views, then the held-out fold scored.
    Cached per fold (resumable)."""
    pool = train + val
    x = torch.cat([clean[0], val_stem[0]])
    idx = torch.cat([clean[1], val_stem[1] + len(train)])
    src = np.array([pool[i].source or pool[i].subclass for i in idx.tolist()])
    y = np.array([pool[i].label for i in idx.tolist()])
    folds = source_folds(src.tolist(), args.source_folds)
    fold_of = np.array([folds[s] for s in src])
    t_all = targets(pool, idx)
    out = np.zeros((len(x), logits(trunk, x[:1]).shape[1]), dtype=np.float32)
    key = hashlib.sha1(f"{sorted(folds.items())}|{args.fold_epochs}|{alpha}|{args.lr}|{args.seed}".encode())
    for k in range(args.source_folds):
        held = fold_of == k
        blob = cache / f"oof-{key.hexdigest()[:8]}-fold{k}.pt"
        if blob.exists():
            out[held] = torch.load(blob, weights_only=True).numpy()
            continue
        names = sorted(s for s, f in folds.items() if f == k)
        print(f"fold {k + 1}/{args.source_folds}: holding out {', '.join(names)} ({int(held.sum())} photos)",
              flush=True)
        trunk.load_state_dict(start)
        rows = torch.from_numpy(np.flatnonzero(~held))
        inner_val = rows[torch.from_numpy(idx.numpy()[rows.numpy()] >= len(train))]
        linear_probe(trunk, x[rows], t_all[rows], x[inner_val], y[inner_val.numpy()], Path(""), quiet=True)
        probe_state = {n: v.clone() for n, v in trunk.state_dict().items()}
        if args.fold_epochs and not isinstance(trunk, nn.Linear):
            fine_tune(trunk, x[rows], t_all[rows], x[inner_val], y[inner_val.numpy()], args, None,
                      epochs=args.fold_epochs, desc=f"fold {k + 1} ")
            trunk.load_state_dict(interpolate(probe_state, trunk.state_dict(), alpha))
        fold_logits = logits(trunk, x[torch.from_numpy(np.flatnonzero(held))])
        torch.save(fold_logits, blob)
        out[held] = fold_logits.numpy()
    return out, y, src, folds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=MODEL_NAMES)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--out", type=Path, help="default: models/<model>")
    p.add_argument("--config", type=Path, help="model config whose threshold is set (default model-archive/config)")
    p.add_argument("--weights", help="ImageNet state dict (needed offline for resnet50)")
    p.add_argument("--random-init", action="store_true", help="knowingly start from random weights")
    p.add_argument("--bn-calibration", type=int, default=512,
                   help="with --random-init: training images used to re-estimate BatchNorm statistics (0 = off)")
    p.add_argument("--tune-from", help="first trainable block (mobilenet_v2: features.N; resnet50: layer4|fc)")
    p.add_argument("--views", type=int, default=1, help="augmented views per training image (plus one clean)")
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs after the linear probe (0 = probe only)")
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--wise-tolerance", type=float, default=0.002,
                   help="interpolate back towards the linear probe as far as val AUC stays within this of the best")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--target-recall", type=float, default=0.90)
    p.add_argument("--review-recall", type=float, default=0.98,
                   help="harmful recall the review threshold is picked for (decision review between the two)")
    p.add_argument("--source-folds", type=int, default=5,
                   help="folds of training sources for out-of-source calibration and thresholds (<2: validation)")
    p.add_argument("--fold-epochs", type=int, default=1, help="fine-tuning epochs of each source fold's model")
    p.add_argument("--category-weight", type=float, default=0.5, help="weight of the categories' loss")
    p.add_argument("--limit-train", type=int, default=0, help="use at most N training images (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--harmful-classes", default="harmful")
    p.add_argument("--benign-classes", default="benign")
    p.add_argument("--fp16", action=argparse.BooleanOptionalAction,
                   help="store the checkpoint in fp16 (halves its size; default on for resnet50)")
    p.add_argument("--version", default="1.3.0")
    p.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("TRAINING_CACHE", ROOT / ".cache/training")),
                   help="cached stem activations and resumable state (env TRAINING_CACHE; default .cache/training)")
    p.add_argument("--cache-only", action="store_true", help="only compute the cached stem activations, then stop")
    p.add_argument("--report-only", action="store_true",
                   help="only evaluate the checkpoint in --out (default models/<model>) and rewrite its model card")
    args = p.parse_args(argv)
    if args.report_only:
        report(args, args.out or ROOT / "models" / args.model)
        return
    started = time.time()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.use_deterministic_algorithms(True)

    out = args.out or ROOT / "models" / args.model
    config = args.config or ROOT / "model-archive" / "config" / f"{args.model}.yaml"
    tune_from = args.tune_from or DEFAULT_TUNE_FROM[args.model]
    classes = ClassMap(tuple(args.harmful_classes.split(",")), tuple(args.benign_classes.split(",")))
    samples = load_dataset(args.data, classes, seed=args.seed)
    train, val, test = (by_split(samples, s) for s in ("train", "val", "test"))
    if args.limit_train and len(train) > args.limit_train:
        rng = np.random.default_rng(args.seed)
        train = [train[i] for i in sorted(rng.choice(len(train), args.limit_train, replace=False))]
    print(f"data {args.data}: train {len(train)}, val {len(val)}, test {len(test)}", flush=True)

    model = build_model(args.model, categories=True)
    provenance = init_weights(model, args.model, args.weights, args.random_init)
    if args.random_init and args.bn_calibration:
        seen = calibrate_batchnorm(model, train, args)
        provenance += f"; BatchNorm statistics re-estimated on {seen} training images"
    print(f"initial weights: {provenance}", flush=True)
    stem, trunk = split_model(args.model, model, tune_from)
    for param in stem.parameters():
        param.requires_grad_(False)

    key = hashlib.sha1(f"{args.data.resolve()}|{len(samples)}|{tune_from}|{provenance}|{args.limit_train}".encode())
    cache = args.cache_dir / args.model / key.hexdigest()[:12]
    cached_before = [n for n in ["train-clean.pt", *(f"train-aug{v}.pt" for v in range(args.views)), "val.pt"]
                     if (cache / n).exists()]
    views = [cache_stem(stem, train, False, args.seed, cache / "train-clean.pt", "stem train (clean)")]
    for v in range(args.views):
        aug = cache_stem(stem, train, True, args.seed + 1 + v, cache / f"train-aug{v}.pt", f"stem train (aug {v})")
        views.append(aug)
    x_val, i_val = cache_stem(stem, val, False, args.seed, cache / "val.pt", "stem val")
    if args.cache_only:
        print(f"stem activations cached in {cache}", flush=True)
        return
    x_train = torch.cat([x for x, _ in views])
    i_train = torch.cat([i for _, i in views])
    t_train = targets(train, i_train)
    y_val = np.array([val[i].label for i in i_val.tolist()])
    start_state = {k: v.clone() for k, v in trunk.state_dict().items()}

    probe = linear_probe(trunk, x_train, t_train, x_val, y_val, cache / f"linear-probe-v{args.views}-categories.pt")
    print(f"linear probe: L2 {probe.l2:g}, val AUC {probe.val_auc:.4f} (grid {probe.grid})", flush=True)
    lp_state = {k: v.clone() for k, v in trunk.state_dict().items()}
    best: dict = {"auc": probe.val_auc, "epoch": -1, "trunk": lp_state}
    alpha, wise = 0.0, {0.0: probe.val_auc}
    if args.epochs and not isinstance(trunk, nn.Linear):  # something beyond the head to fine-tune
        best = fine_tune(trunk, x_train, t_train, x_val, y_val, args, cache)
        alpha, wise = choose_alpha(trunk, lp_state, best["trunk"], x_val, y_val, WISE_ALPHAS, args.wise_tolerance)
        print(f"weight interpolation LP -> FT: val AUC by alpha {wise}; chose alpha {alpha}", flush=True)
    shipped_state = {k: v.clone() for k, v in trunk.state_dict().items()}

    threshold_source = "validation split"
    calibration = None
    sources = {s.source for s in train if s.source}
    if args.source_folds > 1 and len(sources) >= args.source_folds:
        oof, y_oof, src_oof, folds = cross_fit(trunk, start_state, alpha, train, val, views[0], (x_val, i_val),
                                              args, cache)
        calibration = out_of_source(oof, y_oof, src_oof, folds, args.target_recall, args.review_recall)
        trunk.load_state_dict(shipped_state)
        fold_temperature_into_head(split_head(trunk)[1], calibration.temperature)
        print(f"out of source: temperature {calibration.temperature:.3f}, AUC {calibration.auc:.4f}, threshold "
              f"{calibration.threshold:.4f} (recall {args.target_recall}), review {calibration.review_threshold:.4f} "
              f"(recall {args.review_recall})", flush=True)
    val_scores = scores(trunk, x_val).numpy()
    # the validation pair; the out-of-source pair is calibration.threshold / review_threshold (written below)
    threshold = threshold_for_recall(y_val, val_scores, args.target_recall)
    review_threshold = min(threshold_for_recall(y_val, val_scores, args.review_recall), threshold)
    if calibration is not None:
        calibration.at_shipped(oof, y_oof, src_oof, threshold, review_threshold, "validation")
    val_metrics = compute_metrics(y_val, val_scores, threshold)
    wall = time.time() - started

    command = "make train " + shlex.join([f"MODEL={args.model}", f"DATA={args.data}"])
    if len(sys.argv) > 1:
        command = "python -m training.train " + shlex.join(sys.argv[1:] if argv is None else argv)
    meta = {
        "model": args.model, "version": args.version, "threshold": threshold, "labels": list(LABELS),
        "review_threshold": review_threshold, "review_recall": args.review_recall,
        "categories": list(CATEGORIES), "threshold_source": threshold_source,
        "out_of_source": calibration.summary() if calibration else None,
        "weights": provenance, "target_recall": args.target_recall, "trained_at": datetime.now(UTC).isoformat(),
        "best_epoch": best["epoch"] + 1, "wall_time_s": wall, "tune_from": tune_from,
        "stem_cache_reused": cached_before,
        "data": (f"`{args.data}`: {len(train)} train / {len(val)} val / {len(test)} test images "
                 f"(split: {'manifest.csv split column' if (args.data / 'manifest.csv').exists() else 'seeded'})."),
        "recipe": recipe(args, tune_from, probe, best, alpha, wise, isinstance(trunk, nn.Linear)),
        "limitations": ("Trained only on the sources of the training data (for ../shared/data see its README: no "
                        "real explosions, smoke from 3 scenes, knives from one project); held-out numbers are "
                        "in-distribution and images from other sources will score lower. Check the per-subclass "
                        "errors before moving the threshold. "
                        + ("Initialised from RANDOM weights (no ImageNet pretraining available offline): a weak "
                           "model, far below the pretrained one; retrain with `--weights` when you have them."
                           if args.random_init else "")),
        "linear_probe": {"l2": probe.l2, "val_auc": probe.val_auc}, "wise_alpha": alpha,
        "validation": val_metrics, "command": command,
    }
    state = model.state_dict()
    if args.fp16 if args.fp16 is not None else args.model == "resnet50":  # keeps the .mar under ~50 MB
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "meta": meta}, out / "model.pt")
    write_threshold(config, threshold)
    write_threshold(config, review_threshold, REVIEW_THRESHOLD_KEY)
    if calibration is not None:  # the other operating point, served with operating_point: out_of_source
        save_predictions(out / OUT_OF_SOURCE_FILE, oof, y_oof, src_oof, folds)
        for key, value in zip(threshold_keys("out_of_source", "onnx"),
                              (calibration.threshold, calibration.review_threshold), strict=True):
            write_threshold(config, value, key)
    else:  # no folds, no out-of-source pair: the previous checkpoint's must not stay servable
        for key in (*threshold_keys("out_of_source", "onnx"), *threshold_keys("out_of_source", "onnx_int8")):
            drop_threshold(config, key)
        (out / OUT_OF_SOURCE_FILE).unlink(missing_ok=True)
    print(f"threshold {threshold:.4f} -> {config}; checkpoint {out / 'model.pt'}; "
          f"training wall time {wall / 60:.1f} min", flush=True)

    report(args, out)


def report(args: argparse.Namespace, out: Path) -> None:
    """Held-out numbers from the saved file through the server's decode + preprocessing (exactly what
    `make evaluate MODEL=... SPLIT=test CHECKPOINT=.../model.pt` reproduces), then the model card.
    `--report-only` re-runs just this for an existing checkpoint."""
    classes = ClassMap(tuple(args.harmful_classes.split(",")), tuple(args.benign_classes.split(",")))
    test = by_split(load_dataset(args.data, classes, seed=args.seed), "test")
    shipped = build_model(args.model)
    meta = load_checkpoint(shipped, str(out / "model.pt"))
    threshold = float(meta["threshold"])
    result = evaluate(eager(shipped, threshold), args.model, test, out, f"{args.model} (test)")
    photos = score_photos(shipped, args.cache_dir / "unseen")
    print(f"unseen benign photos flagged harmful: {sum(p >= threshold for _, _, p in photos)}/{len(photos)}")
    write_model_card(out, args.model, meta, result, meta.get("command", ""), photo_table(photos, threshold))
    print(json.dumps(result.metrics))


if __name__ == "__main__":
    main()
