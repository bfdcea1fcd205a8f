"""The documented way to a real ResNet50 (`make train MODEL=resnet50 WEIGHTS=...`) is one command that works.

The weights file is made here (a torchvision-layout state dict, fp16 to keep it small): what is tested is the
path, not ImageNet quality. Its provenance must flip from random-init to pretrained in the checkpoint, the model
card and what `make models` packs for the server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import torch
from torchvision import models

from handlers.provenance import REAL_WEIGHTS_HINT, Provenance
from tests.training_support import make_dataset

ROOT = Path(__file__).resolve().parent.parent


def test_make_train_resnet50_with_a_weights_file_gives_a_pretrained_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "resnet50-imagenet.pth"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in models.resnet50().state_dict().items()},
               weights)
    data = make_dataset(tmp_path / "data", per_subclass=4, corrupt=False)
    config = tmp_path / "resnet50.yaml"
    shutil.copy(ROOT / "model-archive" / "config" / "resnet50.yaml", config)
    out = tmp_path / "model"
    # The command of the README and of every random-init warning, with test-sized options.
    assert "make train MODEL={model} WEIGHTS=" in REAL_WEIGHTS_HINT
    train_args = (f"--config {config} --tune-from fc --views 1 --batch-size 8 --bn-calibration 8 "
                  f"--cache-dir {tmp_path / 'cache'}")
    subprocess.run(["make", "--no-print-directory", "train", "MODEL=resnet50", f"WEIGHTS={weights}",
                    f"DATA={data}", f"TRAIN_OUT={out}", "EPOCHS=1", f"TRAIN_ARGS={train_args}"],
                   cwd=ROOT, check=True, env={**os.environ, "MAKEFLAGS": ""}, capture_output=True)
    meta = torch.load(out / "model.pt", weights_only=True)["meta"]
    provenance = Provenance.from_meta("resnet50", meta)
    assert provenance.pretrained and provenance.warning is None
    assert weights.name in meta["weights"] and "sha256" in meta["weights"]
    card = (out / "MODEL_CARD.md").read_text()
    assert weights.name in card and "RANDOM" not in card
    committed = torch.load(ROOT / "models" / "resnet50" / "model.pt", weights_only=True)["meta"]
    shipped = Provenance.from_meta("resnet50", committed)
    # The shipped ResNet50 stays honestly labelled until someone runs the command above for real.
    assert shipped.pretrained or ("RANDOM" in shipped.warning and "make train MODEL=resnet50" in shipped.warning)
