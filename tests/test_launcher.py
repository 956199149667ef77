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
