"""The estimate said at submit: within 2× of what the bench measured, and
moving the right way with the model, the calibration and the device."""

import pytest

from api_client.app.estimate import estimate

REF = dict(params_m=13.83, layers=6, weight_gb=0.0277, context=2048)


@pytest.mark.parametrize("method,measured_s", [("gptq", 16.5), ("awq", 38.5), ("nf4", 8.2), ("rtn", 16.3)])
def test_h100_reference_model_rows_of_bench_results(method, measured_s):
    # bench/RESULTS.md section 1: calibration 128 × 256, all 315 windows of 256 tokens.
    e = estimate(method, "compressed-tensors", **REF, calib_samples=128, calib_seqlen=256, eval_seqlen=256,
                 eval_windows=None, eval_text_tokens=80_325, gpu_name="NVIDIA H100 80GB HBM3")
    assert e.measured and 0.5 <= measured_s / e.seconds <= 2


def test_it_grows_with_calibration_model_and_a_slower_device():
    common = dict(calib_seqlen=512, eval_seqlen=None, eval_windows=None, eval_text_tokens=80_000, context=4096)
    small = estimate("gptq", "compressed-tensors", 1000, 16, 2.0, 128, gpu_name="NVIDIA H100", **common).seconds
    more_calib = estimate("gptq", "compressed-tensors", 1000, 16, 2.0, 512, gpu_name="NVIDIA H100", **common).seconds
    bigger = estimate("gptq", "compressed-tensors", 7000, 32, 14.0, 128, gpu_name="NVIDIA H100", **common).seconds
    cpu = estimate("gptq", "compressed-tensors", 1000, 16, 2.0, 128, gpu_name=None, **common)
    assert small < more_calib and small < bigger and small < cpu.seconds
    assert cpu.device == "CPU"
    other = estimate("gptq", "compressed-tensors", 1000, 16, 2.0, 128, gpu_name="NVIDIA A100-SXM4-80GB", **common)
    from api_client.cli.render import describe_estimate

    assert not other.measured and describe_estimate(other.as_dict()).endswith("A100-SXM4-80GB workers (estimated with H100 figures)")
