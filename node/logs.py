"""The node's logging: structured JSON lines (`log_format: json`) or plain text.

A JSON line is one object: `time` (UTC, ISO 8601), `level`, `logger`, `message`, and the
fields a call passes with `extra=` (node_id, key, statistic, outcome, caller, duration_ms,
...), so a log pipeline can filter and count without parsing prose. The node logs queries,
charges, refusals and identities, never data values.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any, TextIO

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message",
                                                                          "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: _plain(v) for k, v in vars(record).items()
                      if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _Fields(logging.Filter):
    """Adds fixed fields (the node_id) to every record that does not carry them."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__()
        self.fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.fields.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def configure(log_format: str = "text", *, level: int = logging.INFO,
              fields: dict[str, str] | None = None, stream: TextIO | None = None) -> None:
    """Replace the root logger's stream handlers by one in `log_format` ("text" or "json"),
    adding `fields` to every record."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json"
                         else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(_Fields(dict(fields or {})))
    root = logging.getLogger()
    for old in list(root.handlers):
        if type(old) is logging.StreamHandler:  # basicConfig's or ours; not a test's capture
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def _plain(value: Any) -> Any:
    """JSON-safe form of an extra field."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
