"""`uv pip install ARGS`, with pip's configuration of this machine.

uv reads none of pip's configuration (pip.conf, PIP_* variables), and a
machine may install only through what is configured there: a local index,
a folder of wheels, a constraints file, a certificate. This hands them to
uv, so both tools install from the same places. The index strategy is
pip's (the best match over all indexes), not uv's default (the first index
that has the package), so both resolve the same versions.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

# pip's option → uv's; each value may hold several, space-separated.
OPTIONS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
           "constraint": "--constraint"}
# Where pip reads a key from, the one that wins first.
PRECEDENCE = (":env:", "install", "global", "user", "site")


def effective(listing: str) -> dict[str, str]:
    """`pip config list` lines (`section.key='value'`) → key: the winning value."""
    found: dict[str, dict[str, str]] = {}
    for line in listing.splitlines():
        name, sep, value = line.partition("=")
        section, dot, key = name.rpartition(".")
        if sep and dot:
            found.setdefault(key, {})[section] = ast.literal_eval(value)
    return {key: next(by[s] for s in (*PRECEDENCE, *by) if s in by) for key, by in found.items()}


def uv_args(config: dict[str, str]) -> list[str]:
    args = ["--index-strategy", "unsafe-best-match"]
    for key, flag in OPTIONS.items():
        for value in config.get(key, "").split():
            args += [flag, value]
    return args


def main() -> None:
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             check=True).stdout
    config = effective(listing)
    env = dict(os.environ)
    if config.get("cert"):
        env.setdefault("SSL_CERT_FILE", config["cert"])
    if config.get("default-timeout"):
        env.setdefault("UV_HTTP_TIMEOUT", config["default-timeout"])
    os.execvpe("uv", ["uv", "pip", "install", *uv_args(config), *sys.argv[1:]], env)


if __name__ == "__main__":
    main()
