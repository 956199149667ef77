"""--method gguf: formats and options checked at submit, architectures the
converter does not know refused there, a compare member and row per format;
and (slow) a job on a Llama whose rows are multiples of 256 that writes one
GGUF file per format, each holding the types its format means, measured in
the worker's GGUF runtime, with the importance matrix applied."""

import ast
import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest

from api_client.app.client import Client
from api_client.app.compare import compare
from api_client.contract.catalog.gguf_architectures import GGUF_ARCHITECTURES, NEEDS_NEWER_GGUF
from api_client.contract.spec import CalibSpec, EvalSpec, JobSpec, resolve
from api_client.errors import SpecError
from tests.support.cli import invoke
from tests.support.models import build_tiny_llama


def test_formats_options_and_calibration_resolve(tiny_model):
    r = resolve(JobSpec(model=str(tiny_model), method="gguf"))
    assert (r.format, r.params, r.calib is not None) == ("q4_k_m", {"imatrix": True}, True)
    r = resolve(JobSpec(model=str(tiny_model), method="gguf", format=" Q4_K_M, q8_0"))
    assert r.format == "q4_k_m,q8_0" and r.calib is not None
    # Only a k-quant with its importance matrix reads calibration text.
    assert resolve(JobSpec(model=str(tiny_model), method="gguf", format="q8_0,f16")).calib is None
    assert resolve(JobSpec(model=str(tiny_model), method="gguf", params={"imatrix": False})).calib is None
    with pytest.raises(SpecError, match="not --format iq2_xs"):
        resolve(JobSpec(model=str(tiny_model), method="gguf", format="q8_0,iq2_xs"))


@pytest.fixture
def env(qfarm_env, redis_conn):
    invoke("db", "upgrade", env=os.environ.copy(), check=True)
    return os.environ.copy()


def test_an_architecture_the_converter_does_not_know_is_refused_at_submit(env, redis_conn, tiny_model, tmp_path):
    model = tmp_path / "own-arch"
    shutil.copytree(tiny_model, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "architectures": ["MyOwnForCausalLM"]}))
    proc = invoke("submit", str(model), "--method", "gguf", env=env)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == ("error: llama.cpp's GGUF converter does not know the architecture 'MyOwnForCausalLM' "
                                   "(config.json architectures); `qfarm methods gguf` lists the "
                                   f"{len(GGUF_ARCHITECTURES)} it does")
    assert list(redis_conn.keys("qfarm*")) == [] and Client().list() == []
    # The listing it points to names the architecture the tiny Llama has.
    assert "LlamaForCausalLM" in invoke("methods", "gguf", env=env, check=True).stdout


def test_the_architecture_table_is_the_converters():
    """Every causal LM of the TEXT_MODEL_MAP of the converter the worker runs
    (AutoRound's copy of llama.cpp's) is in the catalog, accepted or refused
    for the gguf library it needs. Read from its source: importing AutoRound
    takes 20 s."""
    spec = importlib.util.find_spec("auto_round")
    assert spec is not None and spec.origin is not None
    source = Path(spec.origin).parent / "export" / "export_to_gguf" / "conversion" / "__init__.py"
    known = next(ast.literal_eval(node.value) for node in ast.parse(source.read_text()).body
                 if isinstance(node, (ast.Assign, ast.AnnAssign))
                 and getattr(node.targets[0] if isinstance(node, ast.Assign) else node.target, "id", "") == "TEXT_MODEL_MAP")
    causal = {a for a in known if a.endswith(("ForCausalLM", "LMHeadModel")) and "." not in a and not a.startswith("T5")}
    assert causal == GGUF_ARCHITECTURES | NEEDS_NEWER_GGUF and not GGUF_ARCHITECTURES & NEEDS_NEWER_GGUF


def test_the_converter_of_every_accepted_architecture_loads_and_every_refused_one_does_not():
    """What the worker does first for a GGUF job (gguf_export.converter):
    load the converter module of the model's architecture. Those accepted at
    submit load with the installed gguf library; those refused for needing a
    newer one fail to, so an upgrade that fixes them fails here until they
    move. (Qwen2, Qwen3, Gemma 2 and 3, Granite and DeepSeek-V3 were
    accepted and failed on the worker.)"""
    from auto_round.export.export_to_gguf.llama_cpp_conversion import get_conversion

    def loads(arch: str) -> bool:
        try:
            get_conversion(hparams={"architectures": [arch]}, auto_update=False)
        except NotImplementedError:
            return False
        return True

    assert [a for a in sorted(GGUF_ARCHITECTURES) if not loads(a)] == []
    assert [a for a in sorted(NEEDS_NEWER_GGUF) if loads(a)] == []


def test_a_byte_level_bpe_pre_tokenizer_is_named_by_its_structure(tiny_model, tmp_path):
    from worker.engines.gguf_export import _pre_tokenizer_by_structure

    assert _pre_tokenizer_by_structure(tiny_model) == "gpt-2"
    other = tmp_path / "metaspace"
    other.mkdir()
    tokenizer = json.loads((tiny_model / "tokenizer.json").read_text())
    tokenizer["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    assert _pre_tokenizer_by_structure(other) is None


def test_compare_makes_a_member_and_a_row_per_gguf_format(env, redis_conn, tiny_model):
    client = Client()
    base = JobSpec(model=str(tiny_model), method="rtn", calib=CalibSpec(samples=4, seqlen=64))
    group, members = client.compare(str(tiny_model), ["gptq", "gguf:q4_k_m", "gguf:q8_0"], base)
    by_format = {(j.method, j.format): j for j in members}
    assert set(by_format) == {("gptq", "compressed-tensors"), ("gguf", "q4_k_m"), ("gguf", "q8_0")}
    # The importance matrix needs the text; Q8_0 takes none.
    assert by_format["gguf", "q4_k_m"].calib["samples"] == 4 and by_format["gguf", "q8_0"].calib is None
    labels = [r.label for r in compare(group, members).rows]
    assert sorted(labels) == ["gguf", "gguf:q8_0", "gptq", "original"]
    client.close()


# -- a real job ------------------------------------------------------------------

def _two_d(reader) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in reader.tensors if len(t.shape) == 2}


@pytest.mark.slow
def test_a_gguf_job_writes_one_measured_file_per_format(local_farm, tmp_path):
    import numpy as np
    import torch
    from gguf import GGUFReader, LlamaFileType
    from gguf.quants import dequantize
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from api_client.app.client import job_row
    from api_client.cli.render import status_lines
    from api_client.infra.db import jobs
    from worker import gguf_runtime, runner, texts
    from worker.evaluators.perplexity import perplexity

    settings, db = local_farm
    model_dir = build_tiny_llama(tmp_path / "llama256", hidden=256, layers=1, intermediate=512)
    spec = JobSpec(model=str(model_dir), method="gguf", format="q4_k_m,q8_0", calib=CalibSpec(samples=4, seqlen=128),
                   eval=EvalSpec(seqlen=128, windows=4, decode_tokens=4))
    jobs.create(db, job_row(resolve(spec), "gguf00000001", "tester", "qfarm.test"))
    runner.execute("gguf00000001", settings, worker="test@host")
    job = jobs.get(db, "gguf00000001")
    assert job.state == "succeeded", job.error

    artifact = Path(job.artifact_uri.removeprefix("file://"))
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert sorted(f["path"] for f in manifest["files"]) == ["model-q4_k_m.gguf", "model-q8_0.gguf"]
    q4, q8 = GGUFReader(artifact / "model-q4_k_m.gguf"), GGUFReader(artifact / "model-q8_0.gguf")
    # Every 2-D weight in llama.cpp's Q4_K_M mix (rows of 256: no fallback), the file typed as such.
    assert set(_two_d(q4).values()) == {"Q4_K", "Q6_K"}
    assert q4.fields["general.file_type"].contents() == LlamaFileType.MOSTLY_Q4_K_M
    assert set(_two_d(q8).values()) == {"Q8_0"}

    metrics = job.metrics
    made, measured = metrics["gguf"], metrics["formats"]
    assert made["q4_k_m"]["imatrix"] is True and made["q8_0"]["imatrix"] is False
    assert "fallback" not in made["q4_k_m"] and made["q4_k_m"]["short_rows"]["types"] == {}
    assert all(made[f]["tokenizer_check"]["same"] for f in made)
    runtime = gguf_runtime.runtime()
    assert {m["ppl_kernel"] for m in measured.values()} == {runtime} == {metrics["ppl_kernel"]}
    assert abs(measured["q8_0"]["ppl_ratio"] - 1) < 0.01 and measured["q4_k_m"]["ppl_ratio"] < 1.1
    assert job.ppl_ratio == measured["q4_k_m"]["ppl_ratio"]  # the first format is the headline

    # The recorded perplexity is the file's, as the runtime computes it on the job's windows.
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    windows = texts.token_windows(tokenizer, texts.load_text("builtin", "eval"), 128, 4)
    for fmt in ("q4_k_m", "q8_0"):
        loaded = gguf_runtime.load(artifact / f"model-{fmt}.gguf", runner.gpu.Device("cpu", None, "cpu"), 128)
        ppl = loaded.perplexity(windows)[0] if isinstance(loaded, gguf_runtime.LlamaCppModel) else perplexity(loaded, windows)[0]
        assert ppl == pytest.approx(measured[fmt]["ppl_quantized"], rel=1e-4)
    lines = "\n".join(status_lines(job))
    assert "format q4_k_m" in lines and "format q8_0" in lines

    # The importance matrix weighed the rounding: on a Q4_K weight, the file's
    # error weighted by the calibration activations' squares is below that of
    # the same k-quant search without them.
    from auto_round.data_type.gguf import quant_tensor_gguf_asym_dq

    original = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    layer = original.model.layers[0]
    # Q/K rows are permuted by the converter; these are stored as they are.
    modules = {"ffn_gate": layer.mlp.gate_proj, "ffn_up": layer.mlp.up_proj, "ffn_down": layer.mlp.down_proj,
               "attn_output": layer.self_attn.o_proj}
    tensor = next(t for t in q4.tensors if t.name.split(".")[2] in modules and t.tensor_type.name == "Q4_K")
    module = modules[tensor.name.split(".")[2]]
    squares = []
    handle = module.register_forward_hook(lambda m, args, out: squares.append(args[0].reshape(-1, args[0].shape[-1]).pow(2).sum(0)))
    calib = texts.token_windows(tokenizer, texts.load_text("builtin", "calib"), 128, 4)
    with torch.inference_mode():
        original(torch.tensor(calib))
    handle.remove()
    importance = torch.stack(squares).sum(0)
    weight = module.weight.detach()
    in_file = torch.from_numpy(np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)).reshape(weight.shape)
    plain = quant_tensor_gguf_asym_dq(weight.clone(), bits=4, imatrix=None, scale_dtype=torch.float32)[0]

    def weighted(q):
        return float(((weight - q) ** 2 * importance).sum())

    assert weighted(in_file) < weighted(plain)


def test_a_gguf_file_no_runtime_here_loads_is_unmeasured_not_failed(tiny_model, tmp_path, monkeypatch):
    """On a worker without llama-cpp-python, a file whose architecture
    transformers' GGUF loader does not know: each figure an error, the
    original still measured, nothing raised."""
    from gguf import GGUFWriter
    from transformers import AutoTokenizer

    from worker import evaluators, gguf_runtime
    from worker.gpu import Device

    path = tmp_path / "model-q8_0.gguf"
    writer = GGUFWriter(path, "bitnet")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    monkeypatch.setattr(gguf_runtime, "runtime", lambda: gguf_runtime.TRANSFORMERS)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    windows = [list(range(3, 67)), list(range(70, 134))]
    inputs = evaluators.Inputs(Device("cpu", None, "cpu"), tokenizer, windows, None, 0, tmp_path / "eval")
    figures = evaluators.run_targets(inputs, tiny_model, {"q8_0": path})["q8_0"]
    assert "ppl_ratio" not in figures.columns and "serving_error" in figures.metrics
    assert figures.metrics["perplexity_error"].startswith(
        "the artifact: NoRuntime: model-q8_0.gguf: transformers' GGUF loader does not support it")
    assert figures.metrics["eval_passes"]["baseline_reference"]["kernel"] == "dense"
