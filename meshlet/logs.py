"""How a meshlet process logs: text or JSON lines on stderr, a level changeable at run time.

JSON lines carry time, level, logger and message, and every field a call passes with
`extra=` (`log.info("client connected", extra={"node": node_id})`), so a log pipeline
can filter on them without parsing the message.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from collections.abc import Mapping

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# What every LogRecord has: anything else on a record came from `extra=`.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in line:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(level: str, format: str) -> None:
    """The process's one handler, on stderr (replacing any earlier one)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def levels() -> dict[str, str]:
    """The root level, and every meshlet logger's (its own, or the one it follows)."""
    found = {"root": logging.getLevelName(logging.getLogger().level).lower()}
    for name, logger in sorted(logging.Logger.manager.loggerDict.items()):
        if _ours(name) and isinstance(logger, logging.Logger):
            found[name] = logging.getLevelName(logger.getEffectiveLevel()).lower()
    return found


def set_levels(wanted: Mapping[str, str]) -> dict[str, str]:
    """`{"level": L}` sets every logger's level (the root's, and meshlet's loggers follow
    it again); `{"meshlet.sidecar.dns": L}` one logger's (and those under it). Checked
    whole before anything changes: a bad entry changes nothing. Returns the levels now."""
    known = logging.Logger.manager.loggerDict
    for name, level in wanted.items():
        if level.lower() not in LEVELS:
            raise ValueError(f"{name}={level!r}: choose a level from {', '.join(LEVELS)}")
        if name != "level" and not (_ours(name) and name in known):
            raise ValueError(f"{name!r} is not a meshlet logger (GET /logging lists them)")
    if "level" in wanted:
        logging.getLogger().setLevel(wanted["level"].upper())
        for name, logger in list(known.items()):
            if _ours(name) and isinstance(logger, logging.Logger):
                logger.setLevel(logging.NOTSET)
    for name, level in wanted.items():
        if name != "level":
            logging.getLogger(name).setLevel(level.upper())
    return levels()


def _ours(name: str) -> bool:
    return name == "meshlet" or name.startswith("meshlet.")
