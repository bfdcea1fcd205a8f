"""Request envelopes: raw, KServe v1 and v2 parse to images; malformed bodies are typed 4xx errors."""

from __future__ import annotations

import base64
import json

import pytest

from handlers.envelopes import (
    ParsedRequest,
    Prediction,
    parse_request,
    predictions_from,
    render_response,
    request_body,
    v1_request,
    v2_model_metadata,
    v2_request,
)
from handlers.errors import ModerationError

IMG_A, IMG_B = b"\xff\xd8image-a", b"\x89PNGimage-b"


def reason_of(body: object, ctype: str | None) -> str:
    with pytest.raises(ModerationError) as info:
        parse_request(body, ctype)
    return info.value.reason


def test_raw_bytes_with_image_or_octet_stream_type() -> None:
    for ctype in ("image/jpeg", "application/octet-stream", "image/png; charset=binary", None):
        assert parse_request(IMG_A, ctype) == ParsedRequest("raw", [IMG_A])


def test_v1_b64_and_data_instances_as_bytes_dict_or_text() -> None:
    body = {"instances": [{"b64": base64.b64encode(IMG_A).decode()}, {"data": base64.b64encode(IMG_B).decode()}]}
    for form in (body, json.dumps(body), json.dumps(body).encode()):
        parsed = parse_request(form, "application/json")
        assert parsed.protocol == "v1" and parsed.images == [IMG_A, IMG_B]
    assert parse_request(v1_request([IMG_B]), "application/json").images == [IMG_B]


def test_v2_several_images_and_id() -> None:
    parsed = parse_request(json.dumps(v2_request([IMG_A, IMG_B], "req-7")).encode(), "application/json")
    assert parsed == ParsedRequest("v2", [IMG_A, IMG_B], "req-7")


@pytest.mark.parametrize("images", [[], [IMG_A], [IMG_A, IMG_B]])
@pytest.mark.parametrize("request_id", [None, "req-7", 'quote " and \\ and é'])
def test_request_body_is_the_json_of_the_request_helpers(images: list[bytes], request_id: str | None) -> None:
    v2 = request_body(images, "v2", request_id)
    assert json.loads(v2) == v2_request(images, request_id)
    assert json.loads(request_body(images, "v1", request_id)) == v1_request(images)
    if images:
        assert parse_request(v2, "application/json") == ParsedRequest("v2", images, request_id)


def test_v2_nested_data_with_2d_shape() -> None:
    body = v2_request([IMG_A, IMG_B])
    body["inputs"][0]["data"] = [[x] for x in body["inputs"][0]["data"]]
    body["inputs"][0]["shape"] = [2, 1]
    assert parse_request(body, "application/json").images == [IMG_A, IMG_B]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "malformed_request"),
        (b"[1, 2]", "malformed_request"),
        ({"foo": 1}, "malformed_request"),
        ({"instances": "x"}, "malformed_request"),
        ({"instances": []}, "malformed_request"),
        ({"instances": [{"other": 1}]}, "malformed_request"),
        ({"instances": [{"b64": "@@not base64@@"}]}, "bad_base64"),
        ({"inputs": []}, "malformed_request"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, "malformed_request"),
        ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [3], "data": ["aGk="]}]}, "malformed_request"),
        ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [-1], "data": ["aGk="]}]}, "malformed_request"),
        ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": [7]}]}, "malformed_request"),
        ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]}, "bad_base64"),
    ],
)
def test_malformed_bodies_are_client_errors(body: object, reason: str) -> None:
    assert reason_of(body, "application/json") == reason


def test_unsupported_content_type_is_415() -> None:
    with pytest.raises(ModerationError) as info:
        parse_request(b"hello", "text/plain")
    assert (info.value.reason, info.value.status) == ("unsupported_content_type", 415)


def test_too_many_images_in_one_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented default (64), and MODERATION_MAX_IMAGES_PER_REQUEST read when requests come, not at import."""
    from handlers.envelopes import max_images_per_request

    max_images_per_request.cache_clear()
    monkeypatch.delenv("MODERATION_MAX_IMAGES_PER_REQUEST", raising=False)
    assert max_images_per_request() == 64
    assert reason_of(v2_request([IMG_A] * 65), "application/json") == "malformed_request"
    assert len(parse_request(v2_request([IMG_A] * 64), "application/json").images) == 64
    max_images_per_request.cache_clear()
    monkeypatch.setenv("MODERATION_MAX_IMAGES_PER_REQUEST", "2")
    try:
        assert reason_of(v2_request([IMG_A] * 3), "application/json") == "malformed_request"
        assert len(parse_request(v1_request([IMG_A] * 2), "application/json").images) == 2
    finally:
        max_images_per_request.cache_clear()


def test_bad_base64_names_its_index() -> None:
    body = v2_request([IMG_A])
    body["inputs"][0]["data"].append("***")
    body["inputs"][0]["shape"] = [2]
    with pytest.raises(ModerationError) as info:
        parse_request(body, "application/json")
    assert info.value.index == 1 and info.value.to_dict()["index"] == 1


def test_responses_round_trip_through_the_client_helper() -> None:
    cats = {"firearm": 0.8, "blade": 0.1, "violence": 0.05, "fire_smoke": 0.01}
    preds = [
        Prediction("harmful", 0.9, 0.4, "mobilenet_v2", "1.0", "block", 0.2, cats),
        Prediction("benign", 0.3, 0.4, "mobilenet_v2", "1.0", "review", 0.2, dict.fromkeys(cats, 0.0)),
        Prediction("benign", 0.1, 0.4, "mobilenet_v2", "1.0", "allow", 0.2, dict.fromkeys(cats, 0.5)),
    ]
    v2 = render_response(ParsedRequest("v2", [IMG_A, IMG_B, IMG_A], "id-1"), preds, "mobilenet_v2", "1.0")
    assert v2["id"] == "id-1" and v2["model_name"] == "mobilenet_v2" and v2["model_version"] == "1.0"
    assert {o["name"]: (o["datatype"], o["shape"]) for o in v2["outputs"]} == {
        "label": ("BYTES", [3]), "harmful_score": ("FP32", [3]), "threshold": ("FP32", [3]),
        "decision": ("BYTES", [3]), "review_threshold": ("FP32", [3]), "categories": ("FP32", [3, 4])}
    categories = next(o for o in v2["outputs"] if o["name"] == "categories")
    assert categories["parameters"] == {"categories": "firearm,blade,violence,fire_smoke"}
    assert categories["data"][:4] == [0.8, 0.1, 0.05, 0.01]  # row-major: image 0's four categories first
    assert predictions_from(v2) == preds
    assert predictions_from(render_response(ParsedRequest("v1", [IMG_A, IMG_B]), preds, "m", "1")) == preds
    assert predictions_from(render_response(ParsedRequest("raw", [IMG_A]), preds[:1], "m", "1")) == preds[:1]


def test_a_model_without_categories_leaves_them_out_of_every_protocol() -> None:
    preds = [Prediction("benign", 0.1, 0.4, "resnet50", "1.0", "allow", 0.4)]
    raw = render_response(ParsedRequest("raw", [IMG_A]), preds, "resnet50", "1.0")
    assert raw == {"label": "benign", "harmful_score": 0.1, "threshold": 0.4, "model": "resnet50",
                   "model_version": "1.0", "decision": "allow", "review_threshold": 0.4}
    v2 = render_response(ParsedRequest("v2", [IMG_A]), preds, "resnet50", "1.0")
    assert "categories" not in {o["name"] for o in v2["outputs"]}
    assert predictions_from(v2) == preds


def test_answers_of_an_older_server_still_parse() -> None:
    """A server from before decisions and categories: the new fields read as None."""
    old = {"model_name": "m", "model_version": "1", "outputs": [
        {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["harmful"]},
        {"name": "harmful_score", "datatype": "FP32", "shape": [1], "data": [0.9]},
        {"name": "threshold", "datatype": "FP32", "shape": [1], "data": [0.5]}]}
    assert predictions_from(old) == [Prediction("harmful", 0.9, 0.5, "m", "1")]
    assert predictions_from({"label": "benign", "harmful_score": 0.1, "threshold": 0.5, "model": "m",
                             "model_version": "1"})[0].decision is None


def test_v2_metadata_lists_the_categories_output_only_for_a_model_with_categories() -> None:
    plain = v2_model_metadata("resnet50", ["1"], "p")
    assert [o["name"] for o in plain["outputs"]] == ["label", "harmful_score", "threshold", "decision",
                                                     "review_threshold"]
    with_categories = v2_model_metadata("mobilenet_v2", ["1"], "p", categories=True)
    assert with_categories["outputs"][-1] == {"name": "categories", "datatype": "FP32", "shape": [-1, 4]}


def test_untyped_json_body_is_parsed_as_json() -> None:
    body = json.dumps(v2_request([IMG_A])).encode()
    for ctype in (None, "", "application/octet-stream"):
        assert parse_request(body, ctype).protocol == "v2"
