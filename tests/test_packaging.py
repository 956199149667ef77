"""What `pip install .` ships: the wheel built from the project's files holds
the license, the migrations and the data files, and `qfarm db upgrade` runs
from it alone, away from the checkout (a non-editable install)."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from api_client.infra.db.database import head_revision

ROOT = Path(__file__).resolve().parents[1]
# What pyproject.toml builds from (the wheel's packages, modules and metadata files).
SOURCES = ("api_client", "worker", "migrations", "celery_config.py", "pyproject.toml", "README.md", "LICENSE")


def test_the_wheel_ships_what_an_install_needs(tmp_path):
    src = tmp_path / "src"
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    [wheel] = (tmp_path / "dist").glob("qfarm-*.whl")
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        metadata = whl.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        whl.extractall(tmp_path / "site")
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    shipped = {str(p.relative_to(ROOT)) for d in ("migrations", "api_client/data") for p in (ROOT / d).rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert shipped <= names, shipped - names
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "QFARM_HOME": str(tmp_path / "home")}
    env.pop("QFARM_DATABASE_URL", None)
    run = subprocess.run([sys.executable, "-c", "import migrations; print(migrations.__file__); "
                          "from api_client.cli import main; main()", "db", "upgrade"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    where, said = run.stdout.splitlines()
    assert where.startswith(str(tmp_path / "site")) and said.endswith(f"is at schema {head_revision()}")
