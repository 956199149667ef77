"""One redaction for everything qfarm writes or shows: job errors, events and
metrics in the database, the manifest, the worker's log, the CLI's errors.

A secret reaches a message in ways no caller can foresee: a library's
exception quotes a URL with its password, a user's file turns out to be
`/proc/self/environ`, a traceback holds a header. So every text that leaves a
process goes through `redact`, which masks

- the user:password part of URLs (`scheme://user:pw@host` → `scheme://***@host`);
- the values, wherever they appear, of this process's environment variables
  whose names say they are secret (`*_KEY`, `*SECRET*`, `*PASSWORD*`,
  `*TOKEN`, `*TOKEN_*`; not `*_FILE`, `*_PATH`, `*_DIR`, which name files),
  at least `MIN_SECRET_CHARS` long (a short value would mask ordinary words);
- `NAME=value` and `NAME: value` pairs whose NAME says it is secret;
- token shapes issued by well-known services (Hugging Face `hf_…`, AWS key
  ids `AKIA…`, bearer tokens, GitHub and OpenAI-style keys, private keys).
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

MASK = "***"
MIN_SECRET_CHARS = 8

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^/@\s]+)@")
_SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN(?:$|_)|_KEY$", re.IGNORECASE)
_FILE_NAME = re.compile(r"_(FILE|PATH|DIR)$", re.IGNORECASE)
_PAIR = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<sep>[\"']?\s*[=:]\s*[\"']?)(?P<value>[^\s\"'&;,\x00]+)")
_SHAPES = (
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.DOTALL),
    re.compile(r"\bhf_[A-Za-z0-9]{30,}"),
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})"),
    re.compile(r"\bsk-[A-Za-z0-9_\-]{20,}"),
)
_BEARER = re.compile(r"\b(?P<kind>bearer)\s+[A-Za-z0-9._~+/=\-]{8,}", re.IGNORECASE)


def has_credentials(url: str) -> bool:
    """Whether `url` carries a user or password (scheme://user:pw@host)."""
    return _USERINFO.match(url) is not None


def secret_name(name: str) -> bool:
    """Whether an environment variable or key of this name holds a secret."""
    return bool(_SECRET_NAME.search(name)) and not _FILE_NAME.search(name)


def _secret_values() -> list[str]:
    """This process's secret environment values, longest first (so a value
    that holds another is masked whole). Read at each call: a secret set
    after start-up is masked as well, and the environment is small."""
    values = {v for k, v in os.environ.items() if len(v) >= MIN_SECRET_CHARS and secret_name(k)}
    return sorted(values, key=len, reverse=True)


def _mask_userinfo(m: re.Match[str]) -> str:
    if m.group("userinfo").endswith(f":{MASK}"):
        return m.group(0)  # masked already (SQLAlchemy's user:***)
    return f"{m.group('scheme')}{MASK}@"


def _mask_pair(m: re.Match[str]) -> str:
    if not secret_name(m.group("name")) or m.group("value") == MASK:
        return m.group(0)
    # Prose such as "no hub token: set HF_TOKEN" is no pair: a lower-case
    # word before a colon counts only with a value long enough to be a secret.
    name, sep, value = m.group("name"), m.group("sep"), m.group("value")
    if "=" not in sep and name.islower() and len(value) < MIN_SECRET_CHARS:
        return m.group(0)
    return f"{m.group('name')}{m.group('sep')}{MASK}"


def redact(text: str) -> str:
    """`text` with every secret it holds masked (see the module's docstring)."""
    if not text:
        return text
    for value in _secret_values():
        text = text.replace(value, MASK)
    text = _USERINFO.sub(_mask_userinfo, text)
    for shape in _SHAPES:
        text = shape.sub(MASK, text)
    text = _BEARER.sub(lambda m: f"{m.group('kind')} {MASK}", text)
    return _PAIR.sub(_mask_pair, text)


def redact_value(value: Any) -> Any:
    """A JSON-like value (metrics, a manifest) with every string redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_value(k) if isinstance(k, str) else k: redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(v) for v in value]
    return value


class RedactingFilter(logging.Filter):
    """Redacts a log record as it passes a handler: its message with its
    arguments, and the traceback the formatter would add."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logged as it is, masked
            message = str(record.msg)
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def redact_logging(logger: logging.Logger | None = None) -> None:
    """Put the redaction on every handler of `logger` (the root logger)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
