"""Calibration and evaluation text as qfarm reads it: the two public-domain
books it ships (`builtin`), and the decoding every source goes through (text
with universal newlines, or JSONL with a "text" field per line). Here, not in
the worker, so that a submit checks a local file the same way a worker reads
it, and counts the windows a text holds before anything is queued."""

from __future__ import annotations

import gzip
import json
from importlib import resources

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
