"""KServe v1 `:explain`: captum occlusion grids from the served graph, checked for faithfulness."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from handlers.envelopes import predictions_from, v1_request, v2_request
from handlers.explain import occlusion_grid
from handlers.registry import IMAGE_SIZE, MODEL_NAMES
from tests.image_factory import jpeg

GREY = (124, 116, 104)  # handlers.explain's baseline colour (ImageNet mean)


@pytest.mark.parametrize("channels_last", [True, False])
def test_occlusion_grid_measures_the_score_drop_of_each_cell(channels_last: bool) -> None:
    """A score that only looks at cell (1, 2) of a 4x4 grid: only that cell may carry attribution."""
    cell = IMAGE_SIZE // 4
    pixels = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 250, dtype=np.uint8)

    def score(x: torch.Tensor) -> torch.Tensor:
        hwc = x if channels_last else x.permute(0, 2, 3, 1)
        return hwc[:, cell:2 * cell, 2 * cell:3 * cell, :].mean(dim=(1, 2, 3)) / 255

    image = pixels if channels_last else torch.from_numpy(pixels).permute(2, 0, 1)
    grid = occlusion_grid(score, image, grid=4, per_eval=3)
    expected = (250 - np.mean(GREY)) / 255
    assert np.asarray(grid).shape == (4, 4)
    assert grid[1][2] == pytest.approx(expected, abs=1e-5)
    assert sum(abs(v) for row in grid for v in row) == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="must divide"):
        occlusion_grid(score, image, grid=5)


def png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_explain_grid_is_what_the_served_graph_does_when_a_cell_is_greyed(client: httpx.Client, model: str) -> None:
    """224x224 lossless input (no resize): grey out the top cell ourselves, the predicted drop must match."""
    rng = np.random.default_rng(7)
    base = np.kron(rng.integers(0, 255, (7, 7, 3), dtype=np.uint8), np.ones((32, 32, 1), dtype=np.uint8))
    image = png(base)
    response = client.post(f"/v1/models/{model}:explain", content=image, headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    [explained] = response.json()["explanations"]
    predicted = predictions_from(client.post(f"/v2/models/{model}/infer", json=v2_request([image])).json())[0]
    assert explained["harmful_score"] == pytest.approx(predicted.harmful_score, abs=1e-5)
    assert (explained["label"], explained["threshold"], explained["model"]) == (
        predicted.label, predicted.threshold, model)
    assert explained["method"] == "occlusion" and explained["cell_px"] == 32 and explained["input_px"] == 224
    grid = np.asarray(explained["grid"])
    assert grid.shape == (7, 7) and np.isfinite(grid).all() and np.abs(grid).max() > 0
    i, j = np.unravel_index(np.abs(grid).argmax(), grid.shape)
    occluded = base.copy()
    occluded[32 * i:32 * (i + 1), 32 * j:32 * (j + 1)] = GREY
    answer = client.post(f"/v2/models/{model}/infer", json=v2_request([png(occluded)])).json()
    dropped = predicted.harmful_score - predictions_from(answer)[0].harmful_score
    assert dropped == pytest.approx(grid[i, j], abs=2e-3)


def test_explain_several_images_and_a_bad_one(client: httpx.Client) -> None:
    images = [jpeg(640, 480, seed=1), jpeg(320, 240, seed=2)]
    response = client.post("/v1/models/mobilenet_v2:explain", json=v1_request(images))
    assert response.status_code == 200, response.text
    assert len(response.json()["explanations"]) == 2
    bad = client.post("/v1/models/mobilenet_v2:explain", json=v1_request([images[0], b"not an image"]))
    assert bad.status_code == 400 and bad.json()["reason"] == "not_an_image" and bad.json()["index"] == 1
