"""`python -m bridge.produce [PATH...]`: stream image files into `image_data` with a progress bar.

The reference system's producer, on the contract of bridge/README.md: key = image id (the file's path
relative to the folder, or `--prefix` + a counter with `--repeat`), value = raw bytes with a
`content-type` header and a JSON `metadata` header (file name, size), or `--envelope` JSON envelopes.
Waits until the broker acknowledged every record; prints the ids' count and the rate.
"""

from __future__ import annotations

import argparse
import base64
import json
import mimetypes
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka import KafkaError, Message, Producer
from tqdm import tqdm

from bridge.config import Config
from demo.samples import IMAGE_SUFFIXES, images_in


def files_from(paths: list[str]) -> list[tuple[str, Path]]:
    """(id, file) for every image file named or found under the given folders; samples when none given."""
    if not paths:
        return [(p.name, p) for p in images_in(None)]
    out: list[tuple[str, Path]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out += [(str(f.relative_to(path)), f) for f in images_in(path)]
        elif path.is_file():
            out.append((path.name, path))
        else:
            raise SystemExit(f"{raw}: no such file or directory")
    return out


def encode(image_id: str, data: bytes, content_type: str, metadata: dict, envelope: bool) -> tuple[bytes, list]:
    """Record value + headers for one image, in either accepted form."""
    if envelope:
        body = {"id": image_id, "image_b64": base64.b64encode(data).decode(), "content_type": content_type,
                "metadata": metadata}
        return json.dumps(body).encode(), [("content-type", b"application/json")]
    return data, [("content-type", content_type.encode()), ("metadata", json.dumps(metadata).encode())]


def content_type(path: Path) -> str:
    """MIME type from the file name (the handler sniffs the bytes anyway; this is for consumers/DLQ)."""
    guessed = mimetypes.guess_type(path.name)[0]
    return guessed if guessed and path.suffix.lower() in IMAGE_SUFFIXES else "application/octet-stream"


def records(files: list[tuple[str, Path]], repeat: int, prefix: str) -> Iterator[tuple[str, Path]]:
    for round_ in range(repeat):
        for image_id, path in files:
            yield (f"{prefix}{image_id}" if repeat == 1 else f"{prefix}{round_:05d}/{image_id}"), path


def main(argv: list[str] | None = None) -> int:
    cfg = Config.from_env()
    ap = argparse.ArgumentParser(prog="python -m bridge.produce", description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", help="image files or folders (default: the bundled sample photos)")
    ap.add_argument("--topic", default=cfg.input_topic)
    ap.add_argument("--bootstrap", default=cfg.bootstrap_servers)
    ap.add_argument("--envelope", action="store_true", help="send JSON envelopes instead of raw bytes + headers")
    ap.add_argument("--repeat", type=int, default=1, help="send every file this many times (distinct ids)")
    ap.add_argument("--prefix", default="", help="prefix of every id (e.g. a run name)")
    ap.add_argument("--ids-out", type=Path, help="write the ids sent, one per line")
    args = ap.parse_args(argv)
    files = files_from(args.paths)
    producer = Producer({**cfg.producer_settings(), "bootstrap.servers": args.bootstrap})
    failures: list[str] = []
    acked = 0
    total = len(files) * args.repeat
    bar = tqdm(total=total, unit="img", desc=f"-> {args.topic}", file=sys.stderr)

    def delivered(err: KafkaError | None, msg: Message) -> None:
        nonlocal acked
        if err is not None:
            failures.append(f"{msg.key().decode()}: {err}")
        else:
            acked += 1
        bar.update(1)

    ids: list[str] = []
    cache: dict[Path, bytes] = {}
    t0 = time.perf_counter()
    for image_id, path in records(files, args.repeat, args.prefix):
        data = cache.setdefault(path, path.read_bytes())
        meta = {"file": path.name, "bytes": len(data)}
        value, headers = encode(image_id, data, content_type(path), meta, args.envelope)
        while True:
            try:
                producer.produce(args.topic, key=image_id.encode(), value=value, headers=headers, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
        ids.append(image_id)
    producer.flush(60)
    bar.close()
    elapsed = time.perf_counter() - t0
    if args.ids_out:
        args.ids_out.write_text("\n".join(ids) + "\n")
    print(f"{acked}/{total} images acknowledged by {args.bootstrap} on {args.topic} in {elapsed:.1f}s "
          f"({acked / max(elapsed, 1e-9):.0f}/s)")
    for line in failures[:20]:
        print(f"FAILED {line}", file=sys.stderr)
    return 0 if acked == total else 1


if __name__ == "__main__":
    sys.exit(main())
