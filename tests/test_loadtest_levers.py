"""`make bench-levers` end to end on short windows: every lever runs (or says why not) and lands in the table.
Its numbers are a benchmark's business (loadtest/LEVERS.md), so nothing here compares speeds."""

from __future__ import annotations

from pathlib import Path

from loadtest import levers


def test_every_lever_is_measured_and_reported(tmp_path: Path) -> None:
    rows = levers.main(["--models", "mobilenet_v2", "--seconds", "0.2", "--no-compile", "--out", str(tmp_path),
                        "--no-copy"])
    decode = {r["lever"] for r in rows if r["stage"] == "decode + resize"}
    assert len(decode) == 3 and any("DCT" in d for d in decode) and any("torchvision.io" in d for d in decode)
    forward = [r for r in rows if r["stage"] == "mobilenet_v2 forward"]
    names = {r["lever"] for r in forward}
    assert {"eager PyTorch", "eager PyTorch, channels_last", "ONNX Runtime fp32 (backend: onnx)",
            "ONNX Runtime int8 (backend: onnx_int8)"} <= names  # int8: the committed graph of `make quantize`
    assert {r["batch"] for r in forward} == {1, 4}
    for r in rows:  # every lever ran here: a failure note would mean the measurement is missing
        assert r["images_per_s"] and r["images_per_s"] > 0, r
    table = (tmp_path / "LEVERS.md").read_text()
    assert all(f"| {r['lever']} |" in table for r in rows)
    assert not list(tmp_path.glob("*.onnx"))  # exported graphs are cleaned up
