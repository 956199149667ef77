"""`qfarm worker start`: one process per GPU, pinned, with the right queues
and a name no other worker process has."""

import os

import pytest

from api_client.errors import SpecError
from worker.gpu import GpuInfo
from worker.launcher import command, plan, queues_for_device

H100 = GpuInfo(0, "NVIDIA H100 80GB HBM3", (9, 0), 80 * 2**30)
A100 = GpuInfo(1, "NVIDIA A100-SXM4-80GB", (8, 0), 80 * 2**30)
PID = os.getpid()


def test_one_pinned_worker_per_gpu():
    plans = plan("all", "f1", [H100, A100])
    assert [p.name for p in plans] == [f"gpu0-{PID}", f"gpu1-{PID}"]
    assert plans[0].env["CUDA_VISIBLE_DEVICES"] == "0" and plans[1].env["CUDA_VISIBLE_DEVICES"] == "1"
    assert plans[0].env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    cmd = command(plans[0], "INFO")
    for flag, value in (("--concurrency", "1"), ("--prefetch-multiplier", "1")):
        assert cmd[cmd.index(flag) + 1] == value
    assert cmd[cmd.index("--hostname") + 1].startswith(f"gpu0-{PID}@")


def test_queues_carry_the_farm_and_fp8_only_on_gpus_that_run_it():
    plans = plan("all", "f1", [H100, A100])
    assert plans[0].queues == ["qfarm.f1", "qfarm.f1.gpu", "qfarm.f1.sm89"]
    assert plans[1].queues == ["qfarm.f1", "qfarm.f1.gpu"]
    assert queues_for_device("f1", None) == ["qfarm.f1"]
    assert plan("cpu", "other", [])[0].queues == ["qfarm.other"]


def test_remote_code_queues_only_with_the_flag():
    assert plans_env(plan("cpu", "f1", [], remote_code=False)) == "0"
    code = plan("all", "f1", [H100], remote_code=True)
    assert code[0].queues == ["qfarm.f1", "qfarm.f1.gpu", "qfarm.f1.sm89",
                              "qfarm.f1.code", "qfarm.f1.gpu.code", "qfarm.f1.sm89.code"]
    assert plans_env(code) == "1"


def plans_env(plans):
    return plans[0].env["QFARM_ALLOW_REMOTE_CODE"]


def test_choosing_gpus_and_the_cpu():
    assert [p.name for p in plan("1", "f", [H100, A100])] == [f"gpu1-{PID}"]
    cpu = plan("cpu", "f", [H100])
    assert cpu[0].env["CUDA_VISIBLE_DEVICES"] == "" and cpu[0].gpu is None
    assert plan("auto", "f", [])[0].name == f"cpu-{PID}"
    assert [p.name for p in plan("auto", "f", [H100])] == [f"gpu0-{PID}"]
    with pytest.raises(SpecError, match="no GPU 3 on this host"):
        plan("0,3", "f", [H100, A100])
    with pytest.raises(SpecError, match="no NVIDIA GPU found"):
        plan("all", "f", [])
    with pytest.raises(SpecError, match="--gpus takes"):
        plan("first", "f", [H100])


def test_one_cpu_worker_unless_more_are_asked_for_each_with_its_share_of_the_cores(monkeypatch):
    monkeypatch.setattr("worker.launcher.host_cores", lambda: 8)
    one = plan("cpu", "f", [])
    assert [p.name for p in one] == [f"cpu-{PID}"] and one[0].env["QFARM_CPU_THREADS"] == "8"
    four = plan("cpu", "f", [], cpu_workers=4)
    assert [p.name for p in four] == [f"cpu{i}-{PID}" for i in range(4)]
    assert {p.env["QFARM_CPU_THREADS"] for p in four} == {"2"} and {p.env["OMP_NUM_THREADS"] for p in four} == {"2"}
    assert four[0].describe().startswith(f"cpu0-{PID}: CPU (2 threads)")
    with pytest.raises(SpecError, match="--cpu-workers is for CPU workers: add --gpus cpu"):
        plan("all", "f", [H100], cpu_workers=2)


def test_a_second_launcher_on_the_same_cpu_refuses_in_one_line(qfarm_env, tmp_path):
    """The first launcher's lock is held here as a launcher holds it; the
    second is the real `qfarm worker start`, as a user runs it."""
    import signal
    import subprocess
    import sys

    from api_client.infra.db import Database
    from worker.launcher import hold_devices

    db = Database(os.environ["QFARM_DATABASE_URL"])
    db.upgrade()
    db.dispose()
    held = hold_devices(plan("cpu", "f", []), qfarm_env)
    try:
        proc = subprocess.Popen([sys.executable, "-c", "from api_client.cli import main; main()", "worker", "start",
                                 "--gpus", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "QFARM_PRELOAD": "0"}, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=45)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # it started workers beside the first: what must not happen
            proc.communicate()
            pytest.fail("a second launcher started workers on a CPU that already has them")
        assert proc.returncode == 2 and out == ""
        assert err.count("\n") == 1
        assert err.startswith(f"error: the CPU of this host already has qfarm workers (launcher pid {os.getpid()}, "), err
        assert "--cpu-workers N" in err
        # Another QFARM_HOME (a private test session, another farm) is another scope.
        other = hold_devices(plan("cpu", "f", []), tmp_path / "elsewhere")
        for fd in other:
            os.close(fd)
    finally:
        for fd in held:
            os.close(fd)
    # Released with its holder: the next launcher takes it.
    for fd in hold_devices(plan("cpu", "f", []), qfarm_env):
        os.close(fd)


def test_a_second_launcher_on_a_gpu_already_taken_refuses_and_holds_nothing(tmp_path):
    from api_client.errors import QFarmError
    from worker.launcher import hold_devices

    first = hold_devices(plan("0", "f", [H100, A100]), tmp_path)
    try:
        with pytest.raises(QFarmError, match=r"^GPU 0 of this host already has qfarm workers \(launcher pid \d+, lock "):
            hold_devices(plan("all", "f", [A100, H100]), tmp_path)  # GPU 1 first, then GPU 0
        # The refused launcher let go of GPU 1, which it had locked first.
        second = hold_devices(plan("1", "f", [H100, A100]), tmp_path)
        for fd in second:
            os.close(fd)
    finally:
        for fd in first:
            os.close(fd)
