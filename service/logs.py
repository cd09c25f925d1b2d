"""Logging set-up shared by the API and the worker.

Records carry the ids of the work at hand (request, snapshot, file
system) from context variables, so a line logged deep in the store layer
still says which request it belongs to.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import logging
from collections.abc import Iterator

__all__ = ["ContextFilter", "JsonFormatter", "bind_ids", "configure_logging"]

_CONTEXT_FIELDS = ("request_id", "snapshot_id", "file_system_id")
_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("nas_log_context", default={})


@contextlib.contextmanager
def bind_ids(**ids: str | None) -> Iterator[None]:
    """Add ids to every record logged inside the block, in this task only."""
    merged = dict(_context.get())
    merged.update({key: value for key, value in ids.items() if value})
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the bound ids onto each record, as attributes and as the text `ids`."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _context.get()
        for field in _CONTEXT_FIELDS:
            if not hasattr(record, field):
                setattr(record, field, context.get(field, ""))
        record.ids = " ".join(f"{field}={getattr(record, field)}" for field in _CONTEXT_FIELDS if getattr(record, field))
        return True


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in _CONTEXT_FIELDS:
            value = getattr(record, field, "")
            if value:
                entry[field] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: str = "text") -> None:
    """Send records to stderr, one line each: text with the bound ids at the end, or JSON."""
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s %(ids)s"))

    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)

    # aiormq logs every frame at DEBUG; keep the libraries at INFO.
    for noisy in ("aiormq", "aio_pika", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
