"""Make reads stack.env like scripts/lib.sh and handlers/stack.py do: the environment wins over the file, so a second
stack (another checkout, CI beside a developer's stack) can run every target on other ports."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_variables(env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run(["make", "-pn", "help"], cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"^([A-Z][A-Z0-9_]*) :?= (.*)$", out, re.M))


def test_environment_overrides_stack_env_in_make() -> None:
    base = {k: v for k, v in os.environ.items() if not k.endswith("_PORT")}
    assert make_variables(base)["S3_PORT"] == "9000" and make_variables(base)["INFERENCE_PORT"] == "8080"
    moved = make_variables(base | {"S3_PORT": "19000", "INFERENCE_PORT": "18080"})
    assert (moved["S3_PORT"], moved["INFERENCE_PORT"], moved["KAFKA_PORT"]) == ("19000", "18080", "9092")
