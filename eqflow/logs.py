"""Log lines that carry their fields.

eqflow logs with ``log.info("retrained", extra={"retrain": 3, "points": 75})``. The stock
formatter drops those fields; these formatters print them: ``key=value`` after the message
for people, or one JSON object per line (``--log-json``) for machines.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

# Attributes every LogRecord has; anything else on a record came in through ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(text) if (not text or any(c in text for c in ' "=')) else text


class FieldsFormatter(logging.Formatter):
    """``2026-11-23 20:31:05 INFO eqflow.ackley: retrained retrain=3 points=75``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = extra_fields(record)
        if fields:
            head, sep, tail = line.partition("\n")  # a traceback goes after the fields
            line = head + " " + " ".join(f"{k}={_text(v)}" for k, v in fields.items()) + sep + tail
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and every field."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        out.update(extra_fields(record))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(verbose: int | bool = 0, json_lines: bool = False, stream: TextIO | None = None) -> None:
    """Configure the root logger once for a command: WARNING by default, INFO with -v,
    DEBUG with -vv; fields always shown."""
    level = logging.WARNING if not verbose else (logging.INFO if int(verbose) == 1 else logging.DEBUG)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else FieldsFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "paramiko", "matplotlib", "urllib3"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
