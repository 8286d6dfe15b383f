"""The node's logging: structured JSON lines (`log_format: json`) or plain text.

A JSON line is one object: `time` (UTC, ISO 8601), `level`, `logger`, `message`, and the
fields a call passes with `extra=` (node_id, key, statistic, outcome, caller, duration_ms,
...), so a log pipeline can filter and count without parsing prose. The node logs queries,
charges, refusals and identities, never data values.

gRPC's C core writes its own lines (`I1206 10:00:00.123 42 ssl_transport_security.cc:1880]
Handshake failed ...`) straight to file descriptor 2, past Python's logging. With JSON logs
`route_stderr` makes fd 2 a pipe and a thread turns every line written to it into a JSON
object: logger "grpc-core" (level, source file and line, thread from the line's prefix) for
gRPC's lines, logger "stderr" for anything else (a Python warning or traceback), while the
log handler writes to the original stderr. This keeps what gRPC says (a failed handshake is
the only trace of a caller without a certificate, or with one from another CA, since such
calls never reach the node's code) instead of silencing it with GRPC_VERBOSITY=NONE, which
would also hide gRPC's errors.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import logging
import os
import re
import sys
import threading
from dataclasses import dataclass
from typing import Any, TextIO

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message",
                                                                          "asctime"}
# gRPC's (absl/glog) line prefix: severity letter, MMDD, time, thread id, file:line].
_GRPC_LINE = re.compile(r"^(?P<level>[IWEF])(?P<date>\d{4}) (?P<time>[\d:.]+)\s+"
                        r"(?P<thread>\d+) (?P<source>[^\]\s]+)\] ?(?P<message>.*)$")
_GRPC_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR,
                "F": logging.CRITICAL}


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


@dataclass
class StderrRoute:
    """File descriptor 2 made a pipe whose lines become log records (see `route_stderr`)."""

    original: TextIO  # the process's stderr before, where the log handler writes
    reader: threading.Thread

    def close(self) -> None:
        """Point fd 2 at /dev/null (closing the pipe's last write end: gRPC may still write
        while the process ends, and such a line must not reach the output as plain text),
        then let the thread log what is left in the pipe."""
        sys.stderr.flush()
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        self.reader.join(timeout=5)
        self.original.flush()


def route_stderr() -> StderrRoute:
    """Send everything written to fd 2 (gRPC's C core, Python's warnings and tracebacks)
    through a pipe whose lines a thread logs as JSON-able records; return the stream that is
    the real stderr, for the log handler. The pipe is drained when the process exits."""
    sys.stderr.flush()
    original = open(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)
    reader = threading.Thread(target=_log_lines, args=(read,), name="stderr-to-log",
                              daemon=True)
    reader.start()
    route = StderrRoute(original, reader)
    atexit.register(route.close)
    return route


def _log_lines(fd: int) -> None:
    """Log every line read from `fd` until its write ends are closed."""
    with open(fd, "rb") as pipe:
        for raw in pipe:
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            if text.strip():
                record_line(text)


def record_line(text: str) -> None:
    """One line from stderr as a log record: a gRPC core line parsed into level, thread and
    source (logger "grpc-core"), anything else as a warning of logger "stderr"."""
    match = _GRPC_LINE.match(text)
    if match is None:
        logging.getLogger("stderr").warning(text)
        return
    logging.getLogger("grpc-core").log(
        _GRPC_LEVELS[match["level"]], match["message"],
        extra={"source": match["source"], "thread_id": int(match["thread"])})


def _plain(value: Any) -> Any:
    """JSON-safe form of an extra field."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
