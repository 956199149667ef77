"""Sizes as people write them ('20GiB', '16GB', '1.5G'): for the job's
limits (api_client/contract/spec.py) and QFARM_JOB_MEMORY_LIMIT (api_client/config.py),
which sits below spec.py and so cannot take it from there."""

from __future__ import annotations

import re

from api_client.errors import SpecError

_SIZE = re.compile(r"^\s*(?P<num>\d+(\.\d+)?)\s*(?P<unit>[KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "KIB": 2**10, "M": 1e6, "MB": 1e6, "MIB": 2**20,
          "G": 1e9, "GB": 1e9, "GIB": 2**30, "T": 1e12, "TB": 1e12, "TIB": 2**40}


def parse_size(text: str | int | None) -> int | None:
    """'20GiB', '16GB', '1.5G' or a byte count → bytes."""
    if text is None or isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise SpecError(f"cannot read the size {text!r}: write e.g. 20GiB, 16GB or a byte count")
    return int(float(m.group("num")) * _UNITS[(m.group("unit") or "").upper()])

