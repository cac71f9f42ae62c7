"""Schemathesis hooks for tests/test_fuzz_api.py: the check ``error_is_problem_json``.

Loaded by the schemathesis CLI through ``SCHEMATHESIS_HOOKS=<path of this file>``. The rule it
checks (docs/http-api.md): every error response (status >= 400) is ``application/problem+json``
(RFC 9457) with a JSON object body holding at least ``type`` and ``title`` (strings) and
``status`` (the HTTP status, an integer).
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis

MEDIA_TYPE = "application/problem+json"


def problem_json_violation(status_code: int, headers: dict[str, list[str]], content: bytes,
                           method: str = "GET") -> str | None:
    """Why this response breaks the rule, or None when it keeps it (or is not an error).
    An answer to HEAD has no body: only its media type is judged."""
    if status_code < 400:
        return None
    types = [v for k, values in headers.items() if k.lower() == "content-type" for v in values]
    media = types[0].split(";", 1)[0].strip().lower() if types else ""
    if media != MEDIA_TYPE:
        return f"{status_code} answered as {media or 'no Content-Type'!r}, not {MEDIA_TYPE}"
    if method.upper() == "HEAD":
        return None
    try:
        body: Any = json.loads(content)
    except (UnicodeDecodeError, ValueError):
        return f"{status_code} problem body is not JSON: {content[:200]!r}"
    if not isinstance(body, dict):
        return f"{status_code} problem body is not a JSON object: {content[:200]!r}"
    for name in ("type", "title"):
        if not isinstance(body.get(name), str) or not body[name]:
            return f"{status_code} problem has no string {name!r}: {body!r}"
    status = body.get("status")
    if isinstance(status, bool) or status != status_code:
        return f"{status_code} problem has status {status!r}"
    return None


@schemathesis.check
def error_is_problem_json(ctx: Any, response: Any, case: Any) -> None:
    """Every error response is RFC 9457 problem+json with type, title and the HTTP status."""
    why = problem_json_violation(response.status_code, response.headers, response.content,
                                 case.method)
    if why is not None:
        raise AssertionError(why)
