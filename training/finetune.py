"""Linear probe, then fine-tune, then weight-space interpolation (LP-FT + WiSE-FT) on cached stem activations.

Why this order: fine-tuning from a random head distorts the pretrained features most in the first steps,
which costs robustness on images from unseen sources. Fitting the head first on frozen features (a
logistic regression, like the baseline in the issue) and fine-tuning from there keeps the features
closer to ImageNet's; interpolating the fine-tuned weights back towards that linear-probe model keeps
the in-distribution gain while staying nearer the features that generalise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from handlers.registry import HARMFUL_INDEX, LABELS
from training.evaluation import compute_metrics

N_CLASSES = len(LABELS)


def category_loss(logits: torch.Tensor, targets: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Per-sample BCE of the category logits (after the class logits), zero where the categories are unknown."""
    if logits.shape[1] == N_CLASSES:
        return torch.zeros(len(logits))
    bce = nn.functional.binary_cross_entropy_with_logits(logits[:, N_CLASSES:], targets, reduction="none")
    return bce.mean(1) * known


def split_head(trunk: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """(body, head Linear) of a trunk from features.split_model: body maps stem activations to pooled features."""
    if isinstance(trunk, nn.Linear):
        return nn.Identity(), trunk
    assert isinstance(trunk, nn.Sequential)
    body, last = trunk[:-1], trunk[-1]
    head = last if isinstance(last, nn.Linear) else [m for m in last.modules() if isinstance(m, nn.Linear)][-1]
    return body, head


@torch.no_grad()
def logits(trunk: nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """All logits (classes, then categories) for cached stem activations."""
    trunk.eval()
    out = [trunk(x[i:i + batch].float()) for i in range(0, len(x), batch)]
    return torch.cat(out) if out else torch.empty(0, N_CLASSES)


def scores(trunk: nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """P(harmful) for cached stem activations."""
    return torch.softmax(logits(trunk, x, batch)[:, :N_CLASSES], 1)[:, HARMFUL_INDEX]


def auc(y: np.ndarray, s: torch.Tensor | np.ndarray) -> float:
    """Validation ROC-AUC for model selection (0.5, i.e. uninformative, when val has a single class)."""
    value = compute_metrics(y, np.asarray(s), 0.5)["roc_auc"]
    return 0.5 if value is None else float(value)


@torch.no_grad()
def pooled(body: nn.Module, x: torch.Tensor, desc: str, batch: int = 256, quiet: bool = False) -> torch.Tensor:
    body.eval()
    chunks = range(0, len(x), batch)
    return torch.cat([body(x[i:i + batch].float()) for i in tqdm(chunks, desc=desc, unit="batch", disable=quiet)])


@dataclass
class Targets:
    """What each training row is trained towards: class, multi-hot categories (+ whether known), weight."""

    y: torch.Tensor
    categories: torch.Tensor
    known: torch.Tensor
    w: torch.Tensor

    def __getitem__(self, rows: torch.Tensor) -> Targets:
        return Targets(self.y[rows], self.categories[rows], self.known[rows], self.w[rows])


def fit_logistic(f: torch.Tensor, t: Targets, l2: float, outputs: int, iters: int = 150) -> nn.Linear:
    """Weighted, L2-regularised logistic regression: softmax over the classes plus one independent logistic
    output per category when `outputs` has room for them (full-batch L-BFGS: deterministic, no lr to tune)."""
    head = nn.Linear(f.shape[1], outputs)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=1, max_iter=iters, history_size=20, line_search_fn="strong_wolfe")
    w = t.w / t.w.mean()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        out = head(f)
        per_row = nn.functional.cross_entropy(out[:, :N_CLASSES], t.y, reduction="none")
        per_row = per_row + category_loss(out, t.categories, t.known)
        loss = (per_row * w).mean() + l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head


@dataclass
class ProbeResult:
    l2: float
    val_auc: float
    grid: dict[float, float] = field(default_factory=dict)


def linear_probe(trunk: nn.Module, x_train: torch.Tensor, t_train: Targets,
                 x_val: torch.Tensor, y_val: np.ndarray, cache: Path,
                 grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2), quiet: bool = False) -> ProbeResult:
    """Fit the trunk's head on frozen pooled features; L2 strength picked on validation AUC (ties: stronger)."""
    body, head = split_head(trunk)
    if cache.name and cache.exists():
        saved = torch.load(cache, weights_only=False)
        head.load_state_dict(saved["head"])
        return saved["result"]
    f_train = pooled(body, x_train, "linear probe: features (train)", quiet=quiet)
    f_val = pooled(body, x_val, "linear probe: features (val)", quiet=quiet)
    results: dict[float, tuple[float, nn.Linear]] = {}
    for l2 in tqdm(grid, desc="linear probe: fit", unit="l2", disable=quiet):
        fitted = fit_logistic(f_train, t_train, l2, head.out_features)
        with torch.no_grad():
            results[l2] = (auc(y_val, torch.softmax(fitted(f_val)[:, :N_CLASSES], 1)[:, HARMFUL_INDEX]), fitted)
    best = max(results, key=lambda k: (round(results[k][0], 4), k))
    head.load_state_dict(results[best][1].state_dict())
    result = ProbeResult(best, results[best][0], {k: v[0] for k, v in results.items()})
    if cache.name:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"head": head.state_dict(), "result": result}, cache)
    return result


def interpolate(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) * start + alpha * end for float tensors; others (BatchNorm counters) from `end`."""
    return {k: (1 - alpha) * start[k] + alpha * v if v.is_floating_point() else v for k, v in end.items()}


def choose_alpha(trunk: nn.Module, start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], x_val: torch.Tensor,
                 y_val: np.ndarray, alphas: tuple[float, ...], tolerance: float) -> tuple[float, dict[float, float]]:
    """The smallest alpha (closest to the linear probe) whose validation AUC is within `tolerance` of the best."""
    table = {}
    for a in alphas:
        trunk.load_state_dict(interpolate(start, end, a))
        table[a] = auc(y_val, scores(trunk, x_val))
    best = max(table.values())
    alpha = min(a for a, v in table.items() if v >= best - tolerance)
    trunk.load_state_dict(interpolate(start, end, alpha))
    return alpha, table
