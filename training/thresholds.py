"""The decision threshold: picked on validation for a target harmful recall, written where the handler reads it.

Recall matters most for moderation, so the threshold is the *highest* score that still catches the target
share of harmful validation images: every lower threshold only adds false alarms.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

THRESHOLD_KEY = "threshold"


def _line(key: str) -> re.Pattern[str]:
    return re.compile(rf"^(\s*{re.escape(key)}:\s*)[0-9.eE+-]+", re.M)


def threshold_for_recall(y_true: Sequence[int], scores: Sequence[float], target_recall: float) -> float:
    """The highest threshold whose harmful recall (score >= threshold) is still >= `target_recall`."""
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target recall must be in (0, 1], got {target_recall}")
    y = np.asarray(y_true, dtype=int)
    s = np.asarray(scores, dtype=float)
    positives = np.sort(s[y == 1])[::-1]
    if len(positives) == 0:
        raise ValueError("no harmful images to pick a threshold on")
    needed = min(max(int(np.ceil(target_recall * len(positives) - 1e-9)), 1), len(positives))
    return float(positives[needed - 1])


def write_threshold(config: Path, threshold: float, key: str = THRESHOLD_KEY) -> None:
    """Rewrite only the `key:` value (`threshold`, or `threshold_int8` of `make quantize`) in the model config
    the handler reads; comments and other keys stay. A missing `threshold_int8:` goes right after `threshold:`."""
    text = config.read_text()
    new, n = _line(key).subn(rf"\g<1>{threshold:.6f}", text, count=1)
    if n != 1 and key != THRESHOLD_KEY:
        anchor = _line(THRESHOLD_KEY).search(text)
        if anchor is not None:
            end = text.index("\n", anchor.end()) + 1 if "\n" in text[anchor.end():] else len(text)
            new, n = f"{text[:end]}{anchor.group(1).replace(THRESHOLD_KEY, key)}{threshold:.6f}\n{text[end:]}", 1
    if n != 1:
        raise ValueError(f"no `{key}:` line in {config}")
    config.write_text(new)


def read_threshold(config: Path, key: str = THRESHOLD_KEY) -> float:
    """The threshold currently in a model config (the value `write_threshold` wrote)."""
    match = _line(key).search(config.read_text())
    if match is None:
        raise ValueError(f"no `{key}:` line in {config}")
    return float(match.group(0)[len(match.group(1)):])


def drop_threshold(config: Path, key: str) -> bool:
    """Remove a `key:` line (a threshold the new checkpoint has no value for, e.g. an out-of-source pair after
    a run without source folds), so no stale value of another checkpoint is ever served. True if one was there."""
    text = config.read_text()
    new, n = re.subn(rf"^\s*{re.escape(key)}:\s*[0-9.eE+-]+[^\n]*\n?", "", text, count=1, flags=re.M)
    if n:
        config.write_text(new)
    return bool(n)
