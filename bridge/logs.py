"""Structured logs: one JSON object per line on stderr, with the image id and record coordinates.

Log calls pass fields through `extra=` (`image_id`, `partition`, `offset`, `reason`, ...); they become
top-level keys, so log pipelines can filter by image id without parsing text.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Hashable
from typing import Any

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


class PerRecord:
    """Rate limit for warnings that repeat for one record (retries, a stalled partition): the first one is
    logged, then at most one line per `interval_s` carrying `repeats` = how many were suppressed since.

    A record that fails four times a second for minutes then costs a few lines, not a log file per hour."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._state: dict[Hashable, tuple[float, int]] = {}  # key -> (last logged, suppressed since)

    def log(self, logger: logging.Logger, level: int, key: Hashable, msg: str, extra: dict[str, Any]) -> bool:
        """Log `msg` for `key` unless one was logged within the interval; True when a line was written."""
        now = self._clock()
        last, suppressed = self._state.get(key, (-1e18, 0))
        if now - last < self.interval_s:
            self._state[key] = (last, suppressed + 1)
            return False
        logger.log(level, msg, extra={**extra, "repeats": suppressed})
        self._state[key] = (now, 0)
        return True

    def forget(self, key: Hashable) -> None:
        """The record is finished: drop its state (bounded memory)."""
        self._state.pop(key, None)


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("rdkafka").addFilter(RepeatFilter())
