"""`python -m demo.s3 seed|keys`: the local object store's bucket of sample photos (scripts/s3.sh, `make s3-up`).

`seed` creates the bucket `S3_BUCKET` (stack.env) and uploads the sample photos (or `--images DIR`) under
`samples/`, so references like `s3://moderation-samples/samples/astronaut.png` work at once; `keys` lists them.
Endpoint and credentials come from the same place as the fetcher's: `FETCH_S3_ENDPOINT_URL` and boto3's
standard AWS chain (scripts/lib.sh's `local_s3_env` points it at the local store's generated key pair).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from demo.samples import images_in
from handlers.fetch import FetchSettings, s3_client, sniff
from handlers.stack import stack

PREFIX = "samples/"


def bucket() -> str:
    return stack()["S3_BUCKET"]


def seed(images: str | None = None, prefix: str = PREFIX) -> list[str]:
    """Create the bucket if needed and upload every image; returns the s3:// references."""
    client = s3_client(FetchSettings.from_env())
    name = bucket()
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if name not in existing:
        client.create_bucket(Bucket=name)
    refs = []
    for path in images_in(images):
        data = Path(path).read_bytes()
        key = f"{prefix}{Path(path).name}"
        client.put_object(Bucket=name, Key=key, Body=data, ContentType=sniff(data) or "application/octet-stream")
        refs.append(f"s3://{name}/{key}")
    return refs


def keys(prefix: str = PREFIX) -> list[str]:
    client = s3_client(FetchSettings.from_env())
    listed = client.list_objects_v2(Bucket=bucket(), Prefix=prefix).get("Contents", [])
    return [f"s3://{bucket()}/{o['Key']}" for o in listed]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m demo.s3", description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("seed", "keys"))
    ap.add_argument("--images", help="folder of images to upload (default: the bundled sample photos)")
    args = ap.parse_args(argv)
    refs = seed(args.images) if args.command == "seed" else keys()
    print(f"{len(refs)} objects in s3://{bucket()}/{PREFIX}" if args.command == "seed" else "\n".join(refs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
