"""Typed errors, mapped to an HTTP status and a stable machine-readable `reason` in one place.

Every error body the local endpoint gives is `{"error": <text>, "reason": <one of REASONS>}` (plus `index` for
a bad image inside a multi-image request): the handler's own, and the gateway's for routes, methods, body size,
unknown models and an unavailable server, so clients branch on one field whichever layer refused them.
"""

from __future__ import annotations

import json
from typing import Any

# reason -> HTTP status. Clients (the Kafka bridge, load tests) branch on `reason`, never on text.
CLIENT_REASONS: dict[str, int] = {
    "empty": 400,
    "not_an_image": 400,
    "truncated": 400,
    "bad_base64": 400,
    "malformed_request": 400,
    "unsupported_content_type": 415,
    "too_large": 413,
    "too_many_pixels": 413,
    # images by reference (handlers/fetch.py): refused before any connection, or the fetch failed
    "bad_reference": 400,
    "reference_forbidden": 403,
    "fetch_failed": 422,
    # request level, answered by the gateway (or translated from TorchServe's own error bodies)
    "model_not_found": 404,
    "not_found": 404,
    "method_not_allowed": 405,
    "body_too_large": 413,
}
SERVER_REASONS: dict[str, int] = {
    "internal": 500,
    "explain_unavailable": 501,
    "unavailable": 503,
    "timeout": 504,
}
REASONS: dict[str, int] = CLIENT_REASONS | SERVER_REASONS


# A server's own refusals (no handler reason behind them) by HTTP status; any other status reports as internal.
STATUS_REASONS: dict[int, str] = {400: "malformed_request", 404: "not_found", 405: "method_not_allowed",
                                  408: "timeout", 413: "body_too_large", 415: "unsupported_content_type",
                                  500: "internal", 503: "unavailable", 504: "timeout"}


def reason_for_status(status: int) -> str:
    return STATUS_REASONS.get(status, "internal")


def error_body(reason: str, message: str) -> dict[str, Any]:
    """The one error body shape; refuses reasons that are not documented in REASONS."""
    if reason not in REASONS:
        raise ValueError(f"unknown reason {reason!r}")
    return {"error": message, "reason": reason}


class ModerationError(Exception):
    """A bad request: reported to its client only; never affects other requests or the worker."""

    def __init__(self, reason: str, message: str, index: int | None = None) -> None:
        if reason not in CLIENT_REASONS:
            raise ValueError(f"unknown client error reason {reason!r}")
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
        body = error_body(self.reason, self.message)
        if self.index is not None:
            body["index"] = self.index
        return body

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict()).encode()
