"""`python -m bridge`: run the Kafka bridge with the configuration from the environment (bridge/config.py)."""

from __future__ import annotations

import asyncio
import sys

from bridge import logs
from bridge.app import Bridge
from bridge.config import Config


def main() -> int:
    cfg = Config.from_env()
    logs.setup(cfg.log_level)
    return asyncio.run(Bridge(cfg).run())


if __name__ == "__main__":
    sys.exit(main())
