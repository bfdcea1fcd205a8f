"""`python -m streaming`: the Spark Structured Streaming consumer of `image_data` (streaming/README.md), configured
by the bridge's environment variables plus the STREAMING_* ones (streaming/config.py)."""

from __future__ import annotations

import sys

from bridge import logs
from streaming.config import StreamingSettings
from streaming.query import run


def main() -> int:
    settings = StreamingSettings.from_env()
    logs.setup(settings.bridge.log_level)
    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
