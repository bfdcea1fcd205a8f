"""CPU per call of two per-image steps of the bridge, each beside what it replaced (A B B A, process time):
the inference request's JSON (`json.dumps` of `v2_request` vs `handlers.envelopes.request_body`) and an S3
presign (boto3's `generate_presigned_url` vs `Fetcher._presign`: the bucket's URL learnt once, each key signed by
botocore's SigV4 query signer). No server is called: presigning only signs.

    scripts/s3.sh run python -m loadtest.bridge_costs [--calls 1000]

(`make bench-references` runs it first; `scripts/s3.sh run` gives it the local store's endpoint and credentials.)
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from demo.s3 import bucket
from handlers.envelopes import request_body, v2_request
from handlers.fetch import Fetcher, FetchSettings, parse_reference
from loadtest.loadgen import corpus


def per_call_ms(fn: Callable[[], Any], calls: int) -> float:
    t0 = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - t0) / calls * 1000


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(prog="python -m loadtest.bridge_costs", description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1000)
    args = ap.parse_args(argv)
    image = corpus(1)[0]
    fetcher = Fetcher(FetchSettings.from_env())
    ref = parse_reference(f"s3://{bucket()}/bench/640x480/0.jpg")
    client = fetcher._client()
    fetcher._presign(ref)  # the first call learns the bucket's URL and the credentials

    steps: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
        f"request JSON, one {len(image) // 1000} KB JPEG": (
            lambda: json.dumps(v2_request([image], "id-1"), separators=(",", ":")).encode(),
            lambda: request_body([image], "v2", "id-1")),
        "S3 presign of one key": (
            lambda: client.generate_presigned_url("get_object", Params={"Bucket": ref.bucket, "Key": ref.key},
                                                  ExpiresIn=60),
            lambda: fetcher._presign(ref)),
    }
    out: dict[str, dict[str, float]] = {}
    print("| step | before, ms CPU per call | now, ms CPU per call |\n|---|---|---|")
    for name, (before, now) in steps.items():
        runs = {"before": [], "now": []}
        for which in ("before", "now", "now", "before"):
            runs[which].append(per_call_ms(before if which == "before" else now, args.calls))
        out[name] = {k: sum(v) / len(v) for k, v in runs.items()}
        print(f"| {name} | {out[name]['before']:.3f} | {out[name]['now']:.3f} |")
    return out


if __name__ == "__main__":
    main()
