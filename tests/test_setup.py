"""scripts/setup.sh installs with uv where it can, from the places pip is
configured to install from (scripts/uv_install.py): the same indexes, wheel
folders and constraints, pip's precedence between its sources, and pip's
index strategy, so both resolve the same versions."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "uv_install.py"
spec = importlib.util.spec_from_file_location("uv_install", SCRIPT)
assert spec and spec.loader
uv_install = importlib.util.module_from_spec(spec)
spec.loader.exec_module(uv_install)

# `pip config list` as a machine like CI's prints it.
LISTING = """\
:env:.cert='/etc/ssl/certs/ca-certificates.crt'
:env:.default-timeout='180'
:env:.find-links='/opt/wheels'
global.cert='/etc/ssl/certs/other.crt'
global.constraint='/etc/xdg/pip/constraints.txt'
global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'
global.find-links='/srv/wheels'
"""


def test_pip_s_configuration_becomes_uv_s_arguments():
    config = uv_install.effective(LISTING)
    # A PIP_* variable wins over pip.conf, as in pip.
    assert config["find-links"] == "/opt/wheels" and config["cert"] == "/etc/ssl/certs/ca-certificates.crt"
    assert uv_install.uv_args(config) == [
        "--index-strategy", "unsafe-best-match",
        "--extra-index-url", "file:///opt/pypi/simple", "--extra-index-url", "file:///opt/pypi-more/simple",
        "--find-links", "/opt/wheels",
        "--constraint", "/etc/xdg/pip/constraints.txt",
    ]


def test_no_configuration_leaves_uv_on_its_defaults_but_the_strategy():
    assert uv_install.uv_args(uv_install.effective("")) == ["--index-strategy", "unsafe-best-match"]
