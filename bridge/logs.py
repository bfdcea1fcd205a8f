"""Structured logs: one JSON object per line on stderr, with the image id and record coordinates.

Log calls pass fields through `extra=` (`image_id`, `partition`, `offset`, `reason`, ...); they become
top-level keys, so log pipelines can filter by image id without parsing text.
"""

from __future__ import annotations

import json
import logging
import sys
import time

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class RepeatFilter(logging.Filter):
    """Let an identical message through once per `interval_s` (librdkafka retries connects every ~100 ms)."""

    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        msg = record.getMessage()
        if now - self._last.get(msg, -1e9) < self.interval_s:
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[msg] = now
        return True


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("rdkafka").addFilter(RepeatFilter())
