"""Typed client errors, mapped to an HTTP status and a stable machine-readable `reason` in one place."""

from __future__ import annotations

import json
from typing import Any

# reason -> HTTP status. Clients (the Kafka bridge, load tests) branch on `reason`, never on text.
REASONS: dict[str, int] = {
    "empty": 400,
    "not_an_image": 400,
    "truncated": 400,
    "bad_base64": 400,
    "malformed_request": 400,
    "unsupported_content_type": 415,
    "too_large": 413,
    "too_many_pixels": 413,
}


class ModerationError(Exception):
    """A bad request: reported to its client only; never affects other requests or the worker."""

    def __init__(self, reason: str, message: str, index: int | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.index = index

    @property
    def status(self) -> int:
        return REASONS[self.reason]

    def at(self, index: int) -> ModerationError:
        """The same error, naming the position of the offending image in a multi-image request."""
        return ModerationError(self.reason, f"image {index}: {self.message}", index)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message, "reason": self.reason}
        if self.index is not None:
            body["index"] = self.index
        return body

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict()).encode()
