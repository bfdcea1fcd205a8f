"""The Open Images fetcher against a local HTTP server serving a small fixture in the official CSV formats."""

from __future__ import annotations

import csv
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.image_factory import jpeg
from training import openimages

CLASSES = {"/m/0gxl3": "Handgun", "/m/04ctx": "Knife", "/m/01g317": "Person", "/m/0bt9lr": "Dog"}


class _Handler(SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        type(self).requests.append(self.path)
        super().do_GET()


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture
def fixture_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    root = tmp_path / "www"
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    base = f"http://127.0.0.1:{server.server_address[1]}"
    _write_csv(root / openimages.CLASS_DESCRIPTIONS, ["LabelName", "DisplayName"],
               [[k, v] for k, v in CLASSES.items()] + [["/m/0k4j", "Car"]])
    labels, info = [], []
    images = {"/m/0gxl3": 3, "/m/04ctx": 2, "/m/01g317": 6, "/m/0bt9lr": 4}
    n = 0
    for label, count in images.items():
        for _ in range(count):
            image_id = f"{n:016x}"
            labels.append([image_id, "verification", label, "1"])
            labels.append([image_id, "verification", "/m/0k4j", "0"])  # negative label: ignored
            url = f"{base}/img/{image_id}.jpg"
            (root / "img").mkdir(exist_ok=True)
            if n != 1:  # image 1 is gone from its host: reported, not fatal
                (root / "img" / f"{image_id}.jpg").write_bytes(jpeg(64, 48, seed=n))
            info.append([image_id, "train", url, f"https://flickr.example/{n}", "https://creativecommons.org/licenses/by/2.0/",
                         "", f"author {n}", "t", "1", "md5", url, "0"])
            n += 1
    _write_csv(root / openimages.IMAGE_LABELS.format(split="train"), ["ImageID", "Source", "LabelName", "Confidence"],
               labels)
    _write_csv(root / openimages.IMAGE_INFO.format(split="train"),
               ["ImageID", "Subset", "OriginalURL", "OriginalLandingURL", "License", "AuthorProfileURL", "Author",
                "Title", "OriginalSize", "OriginalMD5", "Thumbnail300KURL", "Rotation"], info)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Handler.requests = []
    yield base
    server.shutdown()


def test_fetches_balanced_capped_subset_with_attribution_and_resumes(fixture_server: str, tmp_path: Path) -> None:
    out = tmp_path / "openimages"
    args = ["--out", str(out), "--base-url", fixture_server, "--per-class", "2"]
    openimages.main(args)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg"))
    harmful = [f for f in files if f.startswith("harmful/")]
    benign = [f for f in files if f.startswith("benign/")]
    assert {f.split("/")[1] for f in harmful} <= {"handgun", "knife"}
    assert len(harmful) == 3  # 2 handguns (cap) + 2 knives, one of which is unavailable
    assert len(benign) <= 4 and {f.split("/")[1] for f in benign} == {"person", "dog"}
    with (out / "ATTRIBUTION.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["path"] for r in rows) == files
    assert all(r["License"].startswith("https://creativecommons.org/") and r["Author"] for r in rows)
    image_requests = len([r for r in _Handler.requests if r.startswith("/img/")])
    openimages.main(args)  # resumable: nothing downloaded twice
    again = len([r for r in _Handler.requests if r.startswith("/img/")]) - image_requests
    assert again == 2  # only the unavailable image is retried (thumbnail, then original URL)
