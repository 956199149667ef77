"""Running `qfarm` as a user does: in this process (fast) or as a subprocess
(the installed entry point, with its own environment)."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

from tests.support.secrets import check_output

QFARM = [sys.executable, "-c", "from api_client.cli import main; main()"]


def invoke(*args: str, env: dict | None = None, check: bool = False) -> SimpleNamespace:
    """Run `qfarm ARGS` in this process with Click's CliRunner: what a user
    sees (stdout, stderr, exit status) without a subprocess's start-up.
    `env` is the whole environment the command should see."""
    from click.testing import CliRunner

    from api_client.cli import cli

    overrides = {k: v for k, v in (env or {}).items() if os.environ.get(k) != v}
    overrides.update({k: None for k in os.environ if env is not None and k not in env})
    result = CliRunner().invoke(cli, list(args), env=overrides, catch_exceptions=False)
    out = SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)
    check_output(f"the output of qfarm {' '.join(args)[:80]}", out.stdout, out.stderr)
    if check and out.returncode != 0:
        raise AssertionError(f"qfarm {' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


def run_cli(*args: str, env: dict | None = None, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
    """Run the installed `qfarm` entry point as a user would."""
    proc = subprocess.run([*QFARM, *args], capture_output=True, text=True, env=env or os.environ.copy(), timeout=timeout)
    check_output(f"the output of qfarm {' '.join(args)[:80]}", proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"qfarm {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc
