"""RFC 9457 problem details: every error the HTTP API returns is one of these.

Rules:
- Each cause has a stable ``type`` (``/problems/<slug>``, listed in docs/http-api.md) and a
  fixed title; ``detail`` says what was wrong with this request, never how the server failed.
- Responses are ``application/problem+json``; extension members (``errors``, ``quota``) sit
  beside the standard ones.
"""

from __future__ import annotations

import json
from typing import Any

from quart import Response

MEDIA_TYPE = "application/problem+json"

TITLES: dict[str, str] = {
    "bad-request": "The request could not be understood",
    "invalid-json": "The body is not valid JSON",
    "unsupported-media-type": "The body must be application/json",
    "body-too-large": "The request body is too large",
    "headers-too-large": "The request headers are too large",
    "invalid-fields": "Some fields are invalid",
    "unauthorized": "Missing or bad credentials",
    "subscription-inactive": "No active subscription",
    "plan-not-entitled": "The plan does not include this",
    "receive-only": "The plan can only receive messages",
    "node-not-whitelisted": "The plan does not allow messaging this node",
    "quota-exceeded": "The monthly message quota is used up",
    "mesh-congested": "The mesh cannot carry the message before it expires",
    "already-on-air": "The message no longer waits and cannot be canceled",
    "not-found": "Not found",
    "request-timeout": "The request took too long to arrive",
    "method-not-allowed": "Method not allowed",
    "service-unavailable": "The service is temporarily unavailable",
    "not-implemented": "Not implemented",
    "internal-error": "Internal error",
}


class Problem(Exception):
    def __init__(self, status: int, slug: str, detail: str | None = None, *,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail or TITLES[slug])
        self.status = status
        self.slug = slug
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"type": f"/problems/{self.slug}", "title": TITLES[self.slug],
                                "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body

    def to_response(self, instance: str | None = None) -> Response:
        response = Response(json.dumps(self.body(instance)), status=self.status,
                            mimetype=MEDIA_TYPE)
        response.headers.update(self.headers)
        return response


STATUS_SLUGS = {400: "bad-request", 401: "unauthorized", 404: "not-found",
                405: "method-not-allowed", 408: "request-timeout", 413: "body-too-large",
                415: "unsupported-media-type", 431: "headers-too-large",
                501: "not-implemented", 503: "service-unavailable"}


def for_status(status: int, detail: str | None = None) -> Problem:
    """The problem for a plain HTTP error raised by the framework (404, 405, 413 ...)."""
    return Problem(status, STATUS_SLUGS.get(status, "bad-request" if status < 500
                                            else "internal-error"), detail)
