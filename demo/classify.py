"""Classify a folder of photos through the KServe v2 endpoint of the local stack and print a table.

    python -m demo.classify [--images DIR] [--models mobilenet_v2 resnet50]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from demo.samples import images_in
from handlers.envelopes import predictions_from, v2_request
from handlers.registry import MODEL_NAMES
from handlers.stack import url


def classify(client: httpx.Client, model: str, path: Path) -> tuple[str, str, float]:
    """(label, score text, latency ms) for one file; client errors are shown, not raised."""
    t0 = time.perf_counter()
    response = client.post(f"/v2/models/{model}/infer", json=v2_request([path.read_bytes()], path.name))
    ms = (time.perf_counter() - t0) * 1000
    if response.status_code != 200:
        reason = response.json().get("reason", "error") if response.headers.get("content-type", "").startswith(
            "application/json") else "error"
        return f"[red]{response.status_code} {reason}[/red]", "-", ms
    pred = predictions_from(response.json())[0]
    colour = "red" if pred.label == "harmful" else "green"
    return f"[{colour}]{pred.label}[/{colour}]", f"{pred.harmful_score:.3f} / {pred.threshold:.2f}", ms


def provenance_warnings(client: httpx.Client, models: list[str]) -> dict[str, str]:
    """model -> warning for models whose weights were not pretrained (from the v2 model metadata)."""
    warnings = {}
    for model in models:
        response = client.get(f"/v2/models/{model}")
        params = response.json().get("parameters") or {} if response.status_code == 200 else {}
        if params.get("warning"):
            warnings[model] = params["warning"]
    return warnings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=os.environ.get("IMAGES") or None, help="folder (default: sample photos)")
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    args = parser.parse_args()
    files = images_in(args.images)
    table = Table(title=f"KServe v2 {url('INFERENCE_PORT')}/v2/models/<model>/infer")
    table.add_column("file", no_wrap=True, max_width=24, overflow="ellipsis")
    table.add_column("model", no_wrap=True)
    table.add_column("label", no_wrap=True)
    table.add_column("score / thr", justify="right", no_wrap=True)
    table.add_column("ms", justify="right", no_wrap=True)
    with httpx.Client(base_url=url("INFERENCE_PORT"), timeout=60) as client:
        warnings = provenance_warnings(client, args.models)
        for path in files:
            for i, model in enumerate(args.models):
                label, score, ms = classify(client, model, path)
                name = f"[yellow]{model} (!)[/yellow]" if model in warnings else model
                table.add_row(path.name if i == 0 else "", name, label, score, f"{ms:.0f}",
                              end_section=i == len(args.models) - 1)
    console = Console()
    console.print(table)
    for warning in warnings.values():  # the table alone would make a random-init model look usable
        console.print(f"[yellow](!) {warning}[/yellow]")


if __name__ == "__main__":
    main()
