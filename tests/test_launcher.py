"""`qfarm worker start`: one process per GPU, pinned, with the right queues."""

import pytest

from api_client.errors import SpecError
from worker.gpu import GpuInfo
from worker.launcher import command, plan
from worker.routing import queues_for_device

H100 = GpuInfo(0, "NVIDIA H100 80GB HBM3", (9, 0), 80 * 2**30)
A100 = GpuInfo(1, "NVIDIA A100-SXM4-80GB", (8, 0), 80 * 2**30)


def test_one_pinned_worker_per_gpu():
    plans = plan("all", [H100, A100])
    assert [p.name for p in plans] == ["gpu0", "gpu1"]
    assert plans[0].env["CUDA_VISIBLE_DEVICES"] == "0" and plans[1].env["CUDA_VISIBLE_DEVICES"] == "1"
    assert plans[0].env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    cmd = command(plans[0], "INFO")
    for flag, value in (("--concurrency", "1"), ("--prefetch-multiplier", "1")):
        assert cmd[cmd.index(flag) + 1] == value


def test_fp8_queue_only_on_gpus_that_run_it():
    plans = plan("all", [H100, A100])
    assert plans[0].queues == ["qfarm", "qfarm.sm89"]
    assert plans[1].queues == ["qfarm"]
    assert queues_for_device(None) == ["qfarm"]


def test_choosing_gpus_and_the_cpu():
    assert [p.name for p in plan("1", [H100, A100])] == ["gpu1"]
    cpu = plan("cpu", [H100])
    assert cpu[0].env["CUDA_VISIBLE_DEVICES"] == "" and cpu[0].gpu is None
    assert plan("auto", [])[0].name == "cpu"
    assert [p.name for p in plan("auto", [H100])] == ["gpu0"]
    with pytest.raises(SpecError, match="no GPU 3 on this host"):
        plan("0,3", [H100, A100])
    with pytest.raises(SpecError, match="no NVIDIA GPU found"):
        plan("all", [])
    with pytest.raises(SpecError, match="--gpus takes"):
        plan("first", [H100])
