"""The real local S3 server (versitygw, scripts/s3.sh) for the tests: started here unless it already runs.

`s3` yields the environment a fetcher needs to read the bucket of sample photos (endpoint, bucket allow-list,
region and boto3's shared credentials file: the standard chain, as `make up` gives the gateway and the bridge).
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from handlers.stack import stack

ROOT = Path(__file__).resolve().parent.parent
S3_SH = ROOT / "scripts" / "s3.sh"


def _listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def s3_env() -> dict[str, str]:
    s = stack()
    return {"FETCH_S3_ENDPOINT_URL": f"http://{s['STACK_HOST']}:{s['S3_PORT']}", "FETCH_S3_BUCKETS": s["S3_BUCKET"],
            "FETCH_S3_REGION": "us-east-1",
            "AWS_SHARED_CREDENTIALS_FILE": str(ROOT / ".run" / "s3" / "credentials")}


@pytest.fixture(scope="session")
def s3() -> Iterator[dict[str, str]]:
    s = stack()
    started = False
    if not _listening(s["STACK_HOST"], int(s["S3_PORT"])):
        subprocess.run([str(S3_SH), "start"], check=True)
        started = True
    else:
        subprocess.run([str(S3_SH), "seed"], check=True, capture_output=True)
    env = s3_env()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update({k: v for k, v in env.items() if k == "AWS_SHARED_CREDENTIALS_FILE"})
    yield env
    for k, v in saved.items():
        if k == "AWS_SHARED_CREDENTIALS_FILE":
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if started:
        subprocess.run([str(S3_SH), "stop"], check=True)
