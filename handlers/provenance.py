"""Where a served model's weights came from, shown wherever a user meets the model.

A ResNet50 fine-tuned from random initialisation (ImageNet ResNet50 weights cannot be obtained offline)
flags almost everything as harmful; a moderator that does so is worse than none, so its provenance travels
with the archive (`provenance.json`, written by `make models` from the checkpoint's meta) into the v2 model
metadata, the demo table and the logs, with the one command that replaces it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PROVENANCE_FILE = "provenance.json"
# The one place that says how to get a real ResNet50 (README "A real ResNet50" repeats it for humans).
REAL_WEIGHTS_HINT = (
    "make train MODEL={model} WEIGHTS=path/to/imagenet-state-dict.pth && make models "
    "(or online: make train MODEL={model}, which downloads torchvision's ImageNet weights)"
)


@dataclass(frozen=True)
class Provenance:
    """The initial weights a checkpoint was fine-tuned from, and whether they were pretrained at all."""

    model: str
    version: str
    weights: str
    pretrained: bool

    @classmethod
    def from_meta(cls, model: str, meta: dict[str, Any]) -> Provenance:
        weights = str(meta.get("weights") or "unknown")
        # training.weights.init_weights and the untrained placeholder both start with "random"
        return cls(model, str(meta.get("version", "unknown")), weights, not weights.lower().startswith("random"))

    @classmethod
    def read(cls, model_dir: str | Path, model: str) -> Provenance:
        """From an unpacked archive; an archive built before provenance.json existed reads as unknown."""
        path = Path(model_dir) / PROVENANCE_FILE
        if not path.exists():
            return cls(model, "unknown", "unknown (archive has no provenance.json: rebuild with `make models`)", True)
        return cls(**json.loads(path.read_text()))

    def write(self, folder: Path) -> Path:
        path = folder / PROVENANCE_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @property
    def warning(self) -> str | None:
        """One line for a user, or None for pretrained weights."""
        if self.pretrained:
            return None
        return (f"{self.model} was fine-tuned from RANDOM weights (no ImageNet pretraining): its predictions are "
                f"not fit for moderation. Real weights: {REAL_WEIGHTS_HINT.format(model=self.model)}")

    def parameters(self) -> dict[str, str]:
        """OIP v2 model-metadata `parameters` (string values, so every v2 client can read them)."""
        params = {"weights": self.weights, "pretrained": str(self.pretrained).lower()}
        if self.warning:
            params["warning"] = self.warning
        return params
