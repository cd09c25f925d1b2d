"""Logging set-up shared by the API and the worker.

Records carry the ids of the work at hand (request, snapshot, file
system) from context variables, so a line logged deep in the store layer
still names the request it belongs to.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import logging
import re
from collections.abc import Iterator

__all__ = ["ContextFilter", "JsonFormatter", "RedactingFormatter", "bind_ids", "configure_logging"]

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


# user:password@ in a URL, whatever the scheme.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@\s]+)@", re.I)


class RedactingFormatter(logging.Formatter):
    """A formatter that removes passwords from every line it writes.

    Secrets reach log lines through exception texts and URLs in messages,
    which no caller can fully avoid, so redaction happens last, on the
    finished line: every password in a URL, and every secret value the
    process was configured with.
    """

    def __init__(self, *arguments: object, secrets: tuple[str, ...] = (), **keywords: object) -> None:
        super().__init__(*arguments, **keywords)
        self._secrets = tuple(secret for secret in secrets if len(secret) >= 4)

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(self.render(record))

    def render(self, record: logging.LogRecord) -> str:
        return super().format(record)

    def redact(self, line: str) -> str:
        line = _URL_CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", line)
        for secret in self._secrets:
            line = line.replace(secret, "***")
        return line


class JsonFormatter(RedactingFormatter):
    """Formats a record as one JSON object per line, for log collectors."""

    def render(self, record: logging.LogRecord) -> str:
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


def configure_logging(level: str, log_format: str = "text", secrets: tuple[str, ...] = ()) -> None:
    """Send records to stderr, one line each: text with the bound ids at the end, or JSON.

    `secrets` are values that must never appear in a log line, such as
    passwords; they are replaced by "***".
    """
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter(secrets=secrets))
    else:
        handler.setFormatter(
            RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s %(ids)s", secrets=secrets)
        )

    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)

    # aiormq logs every frame at DEBUG; keep the libraries at INFO.
    for noisy in ("aiormq", "aio_pika", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
