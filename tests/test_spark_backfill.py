"""The Spark backfill (`python -m streaming.backfill`) on the real Spark engine, with the built model archives.

- A folder tree is scored into Parquet (and JSON lines): the prediction fields the servers give for the same
  bytes, path/size/modification time/sha256, and the handler's reason for a file it refuses; a re-run scores
  only new or changed files.
- Over the test split of ../shared/data it gives the accuracy `make evaluate` gives (same graph, same threshold).
- An object-store prefix (s3://bucket/prefix on the real local store) is backfilled the same way.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from streaming.inprocess import InProcessClassifier, score_images
from tests.image_factory import jpeg, png
from tests.s3_support import s3  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "model-archive" / "build" / "model-store"
DATA = ROOT.parent / "shared" / "data"


def backfill(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "streaming.backfill", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def count(output: str, what: str) -> int:
    match = re.search(rf"{re.escape(what)}\s*│\s*(\d+)", output)
    assert match, f"no {what!r} row in:\n{output[-2000:]}"
    return int(match.group(1))


def rows(out: Path) -> dict[str, dict]:
    table = pq.read_table(out / "predictions").to_pylist()
    return {Path(r["path"].removeprefix("file:")).name: r for r in table}


def test_backfill_scores_a_tree_then_only_what_is_new_or_changed(tmp_path: Path) -> None:
    images = tmp_path / "images"
    (images / "nested" / "deeper").mkdir(parents=True)
    files = {f"a{i}.jpg": jpeg(96 + i, 80, seed=i) for i in range(6)}
    files |= {f"nested/b{i}.png": png(64, 64 + i) for i in range(3)}
    files |= {"nested/deeper/c.jpg": jpeg(120, 90, seed=42), "broken.jpg": b"definitely not a jpeg" * 10}
    for name, data in files.items():
        (images / name).write_bytes(data)
    (images / "notes.txt").write_text("not matched by the image glob")
    out = tmp_path / "out"

    first = backfill("--images", str(images), "--out", str(out), "--jsonl")
    assert count(first, "files matched") == len(files) and count(first, "scored now") == len(files)
    assert count(first, "error not_an_image") == 1
    got = rows(out)
    assert set(got) == {Path(n).name for n in files}
    scorer = InProcessClassifier(STORE).scorer("mobilenet_v2")
    for name, data in files.items():
        row, expected = got[Path(name).name], score_images(scorer, [data])[0]
        assert row["size"] == len(data) and len(row["sha256"]) == 64 and row["modification_time"] is not None
        if name == "broken.jpg":
            assert row["error_reason"] == "not_an_image" and row["label"] is None and row["error"]
            continue
        assert row["error_reason"] is None
        assert row["label"] == expected.label and row["decision"] == expected.decision  # type: ignore[union-attr]
        assert row["harmful_score"] == pytest.approx(expected.harmful_score, abs=1e-6)  # type: ignore[union-attr]
        assert row["threshold"] == expected.threshold and row["model_version"] == expected.model_version  # type: ignore[union-attr]
        assert dict(row["categories"]).keys() == {"firearm", "blade", "violence", "fire_smoke"}
    jsonl = [json.loads(line) for f in (out / "predictions_jsonl").glob("*.json")
             for line in f.read_text().splitlines()]
    assert len(jsonl) == len(files)

    (images / "a0.jpg").write_bytes(jpeg(100, 100, seed=99))  # changed content, same path
    (images / "new.jpg").write_bytes(jpeg(70, 70, seed=7))
    second = backfill("--images", str(images), "--out", str(out))
    assert count(second, "files matched") == len(files) + 1
    assert count(second, "scored now") == 2 and count(second, "already scored (skipped)") == len(files) - 1
    assert len(pq.read_table(out / "predictions")) == len(files) + 2  # the old a0 row stays, with its hash

    third = backfill("--images", str(images), "--out", str(out))
    assert count(third, "scored now") == 0


METRIC_LINE = re.compile(r"accuracy ([\d.]+), precision ([\d.]+), recall ([\d.]+), ROC-AUC ([\d.]+)")


@pytest.mark.skipif(not (DATA / "manifest.csv").exists(), reason="../shared/data is not on this machine")
def test_backfill_accuracy_equals_make_evaluate_on_the_test_split(tmp_path: Path) -> None:
    output = backfill("--images", str(DATA), "--split", "test", "--out", str(tmp_path / "backfill"))
    found = METRIC_LINE.search(" ".join(output.split()))
    assert found, output[-2000:]
    accuracy, precision, recall, auc = map(float, found.groups())
    subprocess.run([sys.executable, "-m", "training.evaluate", "--model", "mobilenet_v2", "--data", str(DATA),
                    "--mar", str(STORE / "mobilenet_v2.mar"), "--split", "test", "--out", str(tmp_path / "evaluate")],
                   cwd=ROOT, check=True, capture_output=True, timeout=900)
    evaluated = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    assert int(re.search(r"test split: (\d+) images", output).group(1)) == evaluated["n_images"]  # type: ignore[union-attr]
    assert accuracy == pytest.approx(evaluated["accuracy"], abs=1e-4)
    assert precision == pytest.approx(evaluated["precision"], abs=1e-4)
    assert recall == pytest.approx(evaluated["recall"], abs=1e-4)
    assert auc == pytest.approx(evaluated["roc_auc"], abs=1e-4)


def test_backfill_of_an_object_store_prefix(s3: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    """s3://bucket/prefix on the real local object store: listed in the driver, fetched by the executors with
    the shared fetcher; the ETag tells an unchanged object before any fetch."""
    import hashlib
    import os
    import uuid

    import boto3

    bucket, prefix = s3["FETCH_S3_BUCKETS"], f"backfill-{uuid.uuid4().hex[:8]}"
    client = boto3.session.Session().client("s3", endpoint_url=s3["FETCH_S3_ENDPOINT_URL"], region_name="us-east-1")
    objects = {f"{prefix}/a/{i}.jpg": jpeg(90, 70, seed=200 + i) for i in range(3)}
    objects[f"{prefix}/broken.jpg"] = b"not an image at all" * 5
    for key, data in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)
    env = {**os.environ, **s3}

    def run() -> str:
        proc = subprocess.run([sys.executable, "-m", "streaming.backfill", "--images", f"s3://{bucket}/{prefix}",
                               "--out", str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    first = run()
    assert count(first, "files matched") == 4 and count(first, "scored now") == 4
    table = {r["path"]: r for r in pq.read_table(tmp_path / "out" / "predictions").to_pylist()}
    assert set(table) == {f"s3://{bucket}/{k}" for k in objects}
    scorer = InProcessClassifier(STORE).scorer("mobilenet_v2")
    for key, data in objects.items():
        row = table[f"s3://{bucket}/{key}"]
        assert row["size"] == len(data) and row["etag"]
        if key.endswith("broken.jpg"):
            assert row["error_reason"] == "not_an_image"
            continue
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
        assert row["harmful_score"] == pytest.approx(score_images(scorer, [data])[0].harmful_score, abs=1e-6)  # type: ignore[union-attr]

    client.put_object(Bucket=bucket, Key=f"{prefix}/a/0.jpg", Body=jpeg(64, 64, seed=999))  # new content, new ETag
    second = run()
    assert count(second, "scored now") == 1 and count(second, "already scored (skipped)") == 3
