"""Validation of a submission, before anything is queued."""

import pytest

from api_client.contract.spec import CalibSpec, EvalSpec, JobSpec, parse_size, resolve
from api_client.errors import SpecError


def spec(model, method="gptq", **kw):
    return JobSpec(model=str(model), method=method, **kw)


def test_defaults_are_filled_in_and_typed(tiny_model):
    r = resolve(spec(tiny_model))
    assert r.format == "compressed-tensors"
    assert r.params == {"bits": 4, "group_size": 128, "act_order": True, "symmetric": True, "dampening": 0.01}
    assert r.calib == CalibSpec()
    assert r.min_capability is None and r.allow_remote_code is False
    assert r.model_bytes > 0


@pytest.mark.parametrize("method,params,fmt,message", [
    ("gptq", {"bits": 3}, None, "gptq does not support --bits 3"),
    ("gptq", {"group_size": 100}, None, "--group-size 100"),
    ("gptq", {"dampening": 1.5}, None, "--dampening for gptq must lie strictly between 0.0 and 1.0"),
    ("awq", {"bits": 8}, None, "awq does not support --bits 8"),
    ("awq", {"group_size": -1}, "awq", "--format awq (GEMM) needs a group size"),
    ("gptq", {"group_size": -1}, "gptq", "cannot combine --group-size -1 with --act-order"),
    ("nf4", {"bits": 4}, None, "--bits does not apply to --method nf4"),
    ("nf4", {"compute_dtype": "int8"}, None, "nf4 does not support --compute-dtype int8"),
    ("int8", {"threshold": -1.0}, None, "--threshold for int8 must lie strictly between"),
    ("rtn", {"act_order": False}, None, "--act-order does not apply to --method rtn"),
    ("fp8", {"group_size": 128}, None, "--group-size does not apply to --method fp8"),
    ("gptq", {}, "awq", "--method gptq writes compressed-tensors/gptq, not --format awq"),
    ("nf4", {}, "compressed-tensors", "not --format compressed-tensors"),
    ("bogus", {}, None, "unknown method 'bogus'"),
])
def test_knobs_a_method_cannot_use_are_refused(tiny_model, method, params, fmt, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve(spec(tiny_model, method, params=params, format=fmt))


def test_every_method_takes_its_defaults(tiny_model):
    from api_client.contract import catalog

    for name in catalog.names():
        m = catalog.get(name)
        for fmt in m.formats:
            r = resolve(spec(tiny_model, name, format=fmt))
            assert r.format == fmt
            # A calibrated method reads the text, except where its format needs none (GGUF's Q8_0, F16).
            assert (r.calib is not None) == (m.calibrated and (name, fmt) not in (("gguf", "q8_0"), ("gguf", "f16")))


def test_fp8_goes_to_the_capability_queue(tiny_model):
    from api_client.contract import routing

    r = resolve(spec(tiny_model, "fp8"))
    assert routing.queue_for("f1", r.min_capability, r.allow_remote_code) == "qfarm.f1.sm89"


def test_methods_without_calibration_refuse_calibration_options(tiny_model):
    with pytest.raises(SpecError, match="takes no calibration data"):
        resolve(spec(tiny_model, "rtn", calib=CalibSpec(samples=16)))


@pytest.mark.parametrize("calib,message", [
    (CalibSpec(samples=0), "--calib-samples must be between"),
    (CalibSpec(seqlen=4), "--calib-seqlen must be between"),
    (CalibSpec(source="hf:"), "bad dataset source"),
    (CalibSpec(source="s3://"), "s3 URL has no bucket"),
])
def test_bad_calibration_is_refused(tiny_model, calib, message):
    with pytest.raises(SpecError, match=message):
        resolve(spec(tiny_model, calib=calib))


def test_bad_eval_and_memory_options(tiny_model):
    with pytest.raises(SpecError, match="--eval-windows must be at least 1"):
        resolve(spec(tiny_model, eval=EvalSpec(windows=0)))
    with pytest.raises(SpecError, match="cannot read the size"):
        resolve(spec(tiny_model, max_vram="lots"))
    with pytest.raises(SpecError, match="too small"):
        resolve(spec(tiny_model, max_vram="1MiB"))
    with pytest.raises(SpecError, match="--weights must be one of"):
        resolve(spec(tiny_model, weights="disk"))


def test_sizes():
    assert parse_size("20GiB") == 20 * 2**30
    assert parse_size("16GB") == 16 * 10**9
    assert parse_size("1.5G") == 1.5e9
    assert parse_size("4096") == 4096
    assert parse_size(None) is None


def test_model_sources(tiny_model, tmp_path):
    assert resolve(spec("meta-llama/Llama-3.1-8B")).model_kind == "hub"
    assert resolve(spec("s3://models/llama")).model_kind == "s3"
    with pytest.raises(SpecError, match="is not a directory"):
        resolve(spec(tmp_path / "absent"))
    with pytest.raises(SpecError, match="has no config.json"):
        resolve(spec(tmp_path))
    with pytest.raises(SpecError, match="neither a local directory"):
        resolve(spec("not a model id!"))
