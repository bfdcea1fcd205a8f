"""Split a model into a frozen stem and a trainable trunk, and cache the stem's outputs.

On a 2-core CPU, running the frozen part of the network once per (image, augmented view) and then
training only the trunk on the cached activations makes fine-tuning the last blocks practical.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from handlers.errors import ModerationError
from handlers.imaging import DecodeLimits, decode_image
from handlers.registry import IMAGE_SIZE, eval_transform, normalize
from training.data import Sample

# MobileNetV2 1.3.0 tunes from features.7 (the block that takes 28x28x32 down to 14x14) on. Chosen on validation
# (`make quantize`'s quantization.json, val_roc_auc and val_harmful_subclass_roc_auc, of each checkpoint) against
# features.11 (1.2.0, whose files are `git show 20fbe7a:models/mobilenet_v2/quantization.json` and
# `MODEL_CARD.md`): ROC-AUC 0.9942 vs 0.9927 fp32 and 0.9929 vs 0.9916 int8, violence 0.9823 vs 0.9811 int8,
# long_gun 0.9946 vs 0.9924 int8. Out of source (5 source folds, the model cards): pooled AUC 0.853 vs 0.847, mean
# per source 0.798 vs 0.792, but the worst source (the violence photos' own) 0.489 vs 0.597. features.11 had beaten
# features.14 (1.1.0) the same way: val AUC int8 0.9916 vs 0.9888, violence 0.9811 vs 0.9745. The cached
# activations per view are twice features.11's (28x28x32 instead of 14x14x64).
DEFAULT_TUNE_FROM = {"mobilenet_v2": "features.7", "resnet50": "fc"}


def split_model(name: str, model: nn.Module, tune_from: str) -> tuple[nn.Module, nn.Module]:
    """(stem, trunk) sharing the model's parameters, so that trunk(stem(x)) == model(x)."""
    if name == "mobilenet_v2":
        k = int(tune_from.split(".")[1]) if tune_from.startswith("features.") else len(model.features)
        stem = model.features[:k]
        trunk = nn.Sequential(model.features[k:], nn.AdaptiveAvgPool2d(1), nn.Flatten(), model.classifier)
        return stem, trunk
    if name == "resnet50":
        layers = [model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2, model.layer3]
        if tune_from == "layer4":
            return nn.Sequential(*layers), nn.Sequential(model.layer4, model.avgpool, nn.Flatten(), model.fc)
        return nn.Sequential(*layers, model.layer4, model.avgpool, nn.Flatten()), model.fc
    raise ValueError(f"no stem/trunk split for {name}")


def train_augmentation():  # type: ignore[no-untyped-def]
    """Views for training: crops, flips, colour and grayscale changes, so the trunk sees what uploads vary in.

    Rotations and flips go to both classes alike: two harmful sources of ../shared/data carry 90-degree rotated
    and flipped copies (and ~125 long guns keep the dark corners of a small-angle rotation), while benign photos
    rarely are; without the same geometry on benign images a model learns "sideways or dark corners means
    harmful". Hence quarter turns, vertical flips and small tilts with black fill, for every image.
    """
    from torchvision.transforms import v2 as T

    return T.Compose([
        T.RandomApply([T.RandomRotation(20, fill=0)], p=0.15),  # dark corners, as in the rotated long guns
        T.RandomResizedCrop(IMAGE_SIZE, scale=(0.45, 1.0), ratio=(0.75, 1.33), antialias=True),
        T.RandomHorizontalFlip(),
        T.RandomVerticalFlip(0.1),
        T.RandomApply([T.RandomChoice([T.RandomRotation((a, a)) for a in (90, 180, 270)])], p=0.2),
        T.ColorJitter(0.35, 0.35, 0.3, 0.04),
        T.RandomGrayscale(0.1),
        T.PILToTensor(),
        normalize(),
    ])


class ImageDataset(Dataset):
    """Decodes exactly like the server (handlers.imaging); unreadable files yield None and are skipped."""

    def __init__(self, samples: list[Sample], transform, seed: int = 0) -> None:  # type: ignore[no-untyped-def]
        self.samples, self.transform, self.seed = samples, transform, seed
        self.limits = DecodeLimits()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
        torch.manual_seed(self.seed * 1_000_003 + i)  # deterministic augmentation per (view seed, image)
        try:
            image = decode_image(self.samples[i].path.read_bytes(), self.limits)
        except (ModerationError, OSError):
            return None
        return i, self.transform(image)


def skip_unreadable(batch):  # type: ignore[no-untyped-def]
    batch = [b for b in batch if b is not None]
    if not batch:
        return torch.empty(0, dtype=torch.long), torch.empty(0)
    idx, x = zip(*batch, strict=True)
    return torch.tensor(idx), torch.stack(x)


@torch.inference_mode()
def cache_stem(
    stem: nn.Module, samples: list[Sample], augment: bool, seed: int, cache: Path, desc: str, batch_size: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stem activations (fp16) and sample indices for one view of `samples`; reused from `cache` when present."""
    if cache.exists():
        blob = torch.load(cache, weights_only=True)
        return blob["x"], blob["idx"]
    transform = train_augmentation() if augment else eval_transform()
    loader = DataLoader(ImageDataset(samples, transform, seed), batch_size=batch_size, num_workers=1,
                        collate_fn=skip_unreadable)
    stem.eval()
    xs, idxs = [], []
    for idx, x in tqdm(loader, desc=desc, unit="batch"):
        if len(idx):
            xs.append(stem(x).half())
            idxs.append(idx)
    x, idx = torch.cat(xs), torch.cat(idxs)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"x": x, "idx": idx}, cache.with_suffix(".tmp"))
    cache.with_suffix(".tmp").rename(cache)  # atomic: an interrupted run resumes from the last finished view
    return x, idx
