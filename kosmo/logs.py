"""Log output: plain text lines (the default) or one JSON object per line.

Rules:
- ``KOSMO_LOG_FORMAT=json`` (``--log-format json``): each record is one line of JSON with
  ``time`` (ISO 8601, UTC), ``level``, ``logger`` and ``message``, plus ``message_id``,
  ``node_id`` and ``bridge_id`` when the log call carries them (``extra={...}``), and ``exc``
  with the traceback text when there is one. Nothing else of the record is copied, so a field
  can never carry more than the message itself says.
- No log call passes a secret (passwords, tokens, JWT secrets, API keys) in ``extra`` or in
  the message; URLs are logged redacted (kosmo.config.redact_url).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ID_FIELDS = ("message_id", "node_id", "bridge_id")


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module's rules)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ID_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = str(value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line, ensure_ascii=False)


def formatter(kind: str) -> logging.Formatter:
    """The formatter for ``kind`` (one of ``FORMATS``)."""
    return JsonFormatter() if kind == "json" else logging.Formatter(TEXT_FORMAT)
