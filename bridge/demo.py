"""`python -m bridge.demo [--images DIR]`: the main job over Kafka (part of `make demo`).

Streams the sample photos (or DIR) into `image_data`, once per model the bridge serves (the `model` header
picks it; records without one get BRIDGE_INFERENCE_MODEL), and prints each prediction from
`image_predictions` (or DLQ record) as it arrives, with end-to-end latency; stops once every id came back.
`--references`: uploads the photos to the local object store first (demo/s3.py) and sends only their
`s3://` keys (JSON envelopes with `s3`), the claim-check path; the bridge fetches each image itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from confluent_kafka import Producer
from rich.console import Console

from bridge.config import Config
from bridge.consume import follow_then_summarise, open_consumer
from bridge.produce import content_type, encode, files_from


def main(argv: list[str] | None = None) -> int:
    cfg = Config.from_env()
    ap = argparse.ArgumentParser(prog="python -m bridge.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--images", help="folder of images (default: the bundled sample photos)")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--references", action="store_true", help="upload to the object store, send s3:// keys only")
    ap.add_argument("--models", nargs="+", default=list(cfg.models), help="models to stream through (default: all "
                    "the bridge serves, BRIDGE_INFERENCE_MODELS)")
    args = ap.parse_args(argv)
    console = Console()
    files = files_from([args.images] if args.images else [])
    run = time.strftime("demo-%H%M%S/") + ("s3/" if args.references else "")
    refs: dict[str, str] = {}
    if args.references:
        from demo.s3 import seed

        uploaded = seed(args.images, prefix=run)
        refs = {ref.rsplit("/", 1)[1]: ref for ref in uploaded}
        console.print(f"uploaded {len(uploaded)} photos to {uploaded[0].rsplit('/', 1)[0]}/")
    consumer = open_consumer(cfg, [cfg.output_topic, cfg.dlq_topic], from_beginning=False)
    producer = Producer(cfg.producer_settings())
    ids = set()
    sent = 0
    for image_id, path in files:
        data = b"" if args.references else path.read_bytes()
        for model in args.models:
            record_id = f"{run}{model}/{image_id}"
            if args.references:
                value = json.dumps({"id": record_id, "s3": refs[path.name], "metadata": {"file": path.name}}).encode()
                headers = [("content-type", b"application/json")]
            else:
                value, headers = encode(record_id, data, content_type(path), {"file": path.name}, False)
            sent += len(value)
            producer.produce(cfg.input_topic, key=record_id.encode(), value=value,
                             headers=[*headers, ("model", model.encode())])
            ids.add(record_id)
    producer.flush(30)
    console.print(f"sent {len(files)} {'references' if args.references else 'images'} x {len(args.models)} models "
                  f"({', '.join(args.models)}) to {cfg.input_topic} ({sent / 1024:.0f} KiB of record values); "
                  f"waiting for {cfg.output_topic} ...")
    seen = follow_then_summarise(consumer, cfg, ids, args.timeout, console, prefix=run)
    missing = ids - {r.id for r in seen}
    if missing:
        console.print(f"[red]{len(missing)} ids not seen within {args.timeout:.0f}s (is the bridge up? make status)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
