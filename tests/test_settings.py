"""Per-model settings: model-config values, overridden by per-model then global environment variables."""

from __future__ import annotations

import pytest

from handlers.settings import HandlerSettings


def test_defaults_then_config_then_env() -> None:
    assert HandlerSettings.load("resnet50", None, env={}).threshold == 0.5
    assert HandlerSettings.load("resnet50", {"threshold": 0.31}, env={}).threshold == 0.31
    env = {"MODERATION_THRESHOLD": "0.2", "MODERATION_THRESHOLD_RESNET50": "0.27"}
    assert HandlerSettings.load("resnet50", {"threshold": 0.31}, env=env).threshold == 0.27
    assert HandlerSettings.load("mobilenet_v2", {"threshold": 0.31}, env=env).threshold == 0.2


def test_types_are_parsed() -> None:
    env = {"MODERATION_CHANNELS_LAST_MOBILENET_V2": "false", "MODERATION_TORCH_THREADS": "2"}
    s = HandlerSettings.load("mobilenet_v2", {"fast_jpeg": "no"}, env=env)
    assert (s.channels_last, s.torch_threads, s.fast_jpeg) == (False, 2, False)


def test_threshold_outside_unit_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="threshold"):
        HandlerSettings.load("mobilenet_v2", {"threshold": 1.5}, env={})


def test_forward_batch_is_parsed_and_never_negative() -> None:
    assert HandlerSettings.load("mobilenet_v2", None, env={}).forward_batch == 0  # one forward pass
    env = {"MODERATION_FORWARD_BATCH_MOBILENET_V2": "2"}
    assert HandlerSettings.load("mobilenet_v2", {"forward_batch": 4}, env=env).forward_batch == 2
    with pytest.raises(ValueError, match="forward_batch"):
        HandlerSettings.load("mobilenet_v2", {"forward_batch": -1}, env={})


def test_int8_backend_serves_its_own_threshold() -> None:
    config = {"backend": "onnx_int8", "threshold": 0.8, "threshold_int8": 0.7}
    assert HandlerSettings.load("mobilenet_v2", config, env={}).threshold == 0.7
    # the fp32 threshold goes with the fp32 graph, also when the env switches back to it
    assert HandlerSettings.load("mobilenet_v2", config, env={"MODERATION_BACKEND": "onnx"}).threshold == 0.8
    # an explicit operator threshold wins over both
    env = {"MODERATION_THRESHOLD_MOBILENET_V2": "0.6"}
    assert HandlerSettings.load("mobilenet_v2", config, env=env).threshold == 0.6
    with pytest.raises(ValueError, match="threshold_int8"):
        HandlerSettings.load("mobilenet_v2", {"backend": "onnx_int8", "threshold": 0.8}, env={})


def test_review_threshold_defaults_to_no_band_and_follows_the_backend() -> None:
    plain = HandlerSettings.load("resnet50", {"threshold": 0.6}, env={})
    assert plain.review_threshold == 0.6  # no review band: decisions are block or allow only
    config = {"backend": "onnx_int8", "threshold": 0.8, "threshold_int8": 0.7, "review_threshold": 0.3,
              "review_threshold_int8": 0.25}
    assert HandlerSettings.load("mobilenet_v2", config, env={}).review_threshold == 0.25
    assert HandlerSettings.load("mobilenet_v2", config, env={"MODERATION_BACKEND": "onnx"}).review_threshold == 0.3
    env = {"MODERATION_REVIEW_THRESHOLD_MOBILENET_V2": "0.1"}
    assert HandlerSettings.load("mobilenet_v2", config, env=env).review_threshold == 0.1
    # moving only the threshold below the configured band keeps decisions consistent: no band
    low = HandlerSettings.load("mobilenet_v2", config, env={"MODERATION_THRESHOLD": "0.2"})
    assert (low.threshold, low.review_threshold) == (0.2, 0.2)


def test_review_threshold_above_the_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="review_threshold"):
        HandlerSettings.load("mobilenet_v2", {"threshold": 0.5, "review_threshold": 0.7}, env={})


def test_operating_point_serves_its_own_pair_for_each_backend() -> None:
    config = {"backend": "onnx_int8", "threshold": 0.6, "review_threshold": 0.4, "threshold_int8": 0.58,
              "review_threshold_int8": 0.38, "out_of_source_threshold": 0.38, "out_of_source_review_threshold": 0.18,
              "out_of_source_threshold_int8": 0.36, "out_of_source_review_threshold_int8": 0.17}
    served = HandlerSettings.load("mobilenet_v2", config, env={})
    assert (served.operating_point, served.threshold, served.review_threshold) == ("validation", 0.58, 0.38)
    env = {"MODERATION_OPERATING_POINT_MOBILENET_V2": "out-of-source"}  # the make flag's spelling is accepted
    oos = HandlerSettings.load("mobilenet_v2", config, env=env)
    assert (oos.operating_point, oos.threshold, oos.review_threshold) == ("out_of_source", 0.36, 0.17)
    fp32 = HandlerSettings.load("mobilenet_v2", config, env=env | {"MODERATION_BACKEND": "onnx"})
    assert (fp32.threshold, fp32.review_threshold) == (0.38, 0.18)
    # an operator's threshold still wins over the pair; the band below it stays the point's
    moved = HandlerSettings.load("mobilenet_v2", config, env=env | {"MODERATION_THRESHOLD": "0.5"})
    assert (moved.threshold, moved.review_threshold) == (0.5, 0.17)


def test_operating_point_without_its_thresholds_or_unknown_is_refused() -> None:
    env = {"MODERATION_OPERATING_POINT": "out_of_source"}
    with pytest.raises(ValueError, match="out_of_source_threshold"):  # e.g. ResNet50: trained without folds
        HandlerSettings.load("resnet50", {"threshold": 0.3}, env=env)
    with pytest.raises(ValueError, match="operating_point .* must be one of validation, out_of_source"):
        HandlerSettings.load("mobilenet_v2", {"threshold": 0.3, "operating_point": "test"}, env={})


def test_shipped_config_carries_both_operating_points() -> None:
    """Every pair `make train` / `make quantize` write is in the archive's config, each inside [0, 1], the
    review threshold at most its decision threshold, for every backend and operating point."""
    from pathlib import Path

    import yaml

    from handlers.settings import BACKENDS, OPERATING_POINTS

    config = yaml.safe_load((Path(__file__).resolve().parent.parent / "model-archive" / "config"
                             / "mobilenet_v2.yaml").read_text())["handler"]
    for point in OPERATING_POINTS:
        for backend in BACKENDS:
            env = {"MODERATION_OPERATING_POINT": point, "MODERATION_BACKEND": backend}
            s = HandlerSettings.load("mobilenet_v2", config, env=env)
            assert 0 < s.review_threshold < s.threshold < 1, (point, backend)
