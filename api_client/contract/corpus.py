"""Calibration and evaluation text as qfarm reads it: the two public-domain
books it ships (`builtin`), and the decoding every source goes through (text
with universal newlines, or JSONL with a "text" field per line). Here, not in
the worker, so that a submit checks a local file the same way a worker reads
it, and counts the windows a text holds before anything is queued."""

from __future__ import annotations

import gzip
import json
import os
import stat
from importlib import resources
from pathlib import Path

from api_client.config import max_text_bytes
from api_client.errors import QFarmError

BUILTIN_FILES = {"calib": "calib-news-from-nowhere.txt.gz", "eval": "eval-log-school-house.txt.gz"}


def universal_newlines(text: str) -> str:
    """As Python's text mode reads files: CRLF and CR become LF. A model
    trained on text read that way has never seen a carriage return, and
    Gutenberg books ship with CRLF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def builtin_text(purpose: str) -> str:
    name = BUILTIN_FILES[purpose]
    return decode_text(gzip.decompress(resources.files("api_client").joinpath("data").joinpath(name).read_bytes()), name)


def _not_regular(mode: int) -> str | None:
    """Why a file of this mode is no text file, in words (None: it is one)."""
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return f"is {kind}, not a regular file"
    return None if stat.S_ISREG(mode) else "is not a regular file"


def not_a_file(path: Path) -> str | None:
    """Why `path` cannot be read as a text file ("does not exist", "is a
    FIFO (named pipe), not a regular file", ...), or None. Looked up without
    opening it: opening a FIFO would wait for a writer."""
    try:
        return _not_regular(os.stat(path).st_mode)
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"


def read_bounded(path: Path, what: str, limit: int | None = None) -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them
    (QFARM_MAX_TEXT_BYTES): a larger file is refused before it is read, and
    one that grows while it is read is never held past the limit. Checked on
    the open file, so a file swapped for a FIFO or a device after a look at
    its name is refused too."""
    limit = max_text_bytes() if limit is None else limit
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        raise QFarmError(f"{what} {path} {not_a_file(path) or 'cannot be read'}") from None
    st = os.fstat(fd)
    why = _not_regular(st.st_mode)
    if why:
        os.close(fd)
        raise QFarmError(f"{what} {path} {why}")
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1) if st.st_size <= limit else b""
        if st.st_size > limit or len(data) > limit:
            raise QFarmError(f"{what} {path} is {max(st.st_size, len(data)) / 2**20:.1f} MiB, more than the "
                             f"{limit / 2**20:.0f} MiB a text may be (QFARM_MAX_TEXT_BYTES)")
    return data


def decode_text(raw: bytes, name: str) -> str:
    text = universal_newlines(raw.decode("utf-8", errors="replace"))
    if name.endswith((".jsonl", ".json")):
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise QFarmError(f"{name} line {n} is not JSON (JSONL needs one object with a 'text' field per line)") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise QFarmError(f"{name} line {n} has no 'text' string field (JSONL needs one object with a 'text' field per line)")
            records.append(rec["text"])
        text = "\n\n".join(records)
    if not text.strip():
        raise QFarmError(f"{name} holds no text")
    return text
