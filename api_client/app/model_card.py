"""The model card (README.md) `qfarm publish` writes beside an artifact, from
the job's row alone: YAML metadata the hub indexes (base model, the
`quantized` relation, license, tags, a model-index of the measured results),
then how the artifact was made, what was measured and how to load it, and
the `qfarm submit` that makes it again.

A card holds nothing a job row may not show the world: no user or worker
names, no internal paths or URLs (a model, calibration or evaluation source
that is not public is named by its kind), no credentials. The same job gives
the same card byte for byte, so publishing it again changes nothing.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from api_client.contract import catalog, sources
from api_client.contract.catalog.options import cli_name, off_flag
from api_client.contract.figures import num, size
from api_client.infra.db.models import Job


@dataclass(frozen=True)
class CardInputs:
    """What the card says beyond the job row."""

    repo: str  # owner/name of the repo it goes to
    base_model: str | None  # the hub id the artifact was quantized from, where known
    license: str | None  # the base model's license, where its card says it


def public_source(source: str | None) -> str | None:
    """A calibration or evaluation source as a card may name it: builtin and
    hub datasets as they are; a team's own file (uploaded, s3://, file://)
    by no name."""
    if not source or source == sources.BUILTIN or source.startswith("hf:"):
        return source or sources.BUILTIN
    return None


def formats_of(job: Job) -> list[str]:
    return job.format.split(",")


def render(job: Job, inputs: CardInputs) -> str:
    from huggingface_hub import ModelCardData

    data = ModelCardData(
        base_model=inputs.base_model, license=inputs.license, library_name="gguf" if job.method == "gguf" else "transformers",
        pipeline_tag="text-generation", tags=["qfarm", job.method, *formats_of(job)], model_name=inputs.repo.split("/")[-1],
        eval_results=_eval_results(job) or None,
        # The hub's own word for an artifact made from base_model by quantizing it.
        base_model_relation="quantized" if inputs.base_model else None,
    )
    body = "\n\n".join(part for part in (
        _title(job, inputs), _made(job), _accuracy(job), _serving(job), _gguf_files(job), _usage(job, inputs.repo),
        _reproduce(job, inputs.base_model)) if part)
    return f"---\n{data.to_yaml()}\n---\n\n{body}\n"


def _eval_results(job: Job) -> list[Any]:
    from huggingface_hub import EvalResult

    source = str((job.eval or {}).get("source") or sources.BUILTIN)
    text = public_source(source) or "custom text"
    out = []
    per_format = (job.metrics or {}).get("formats") or {}
    ppl = [(label, f.get("ppl_quantized")) for label, f in per_format.items()] or [(job.format, job.ppl_quantized)]
    for label, value in ppl:
        if value is not None:
            out.append(EvalResult(task_type="text-generation", dataset_type=text, dataset_name=f"{text} (perplexity)",
                                  metric_type="perplexity", metric_value=round(float(value), 4),
                                  metric_name=f"perplexity, {label}"))
    for name, t in ((job.metrics or {}).get("tasks") or {}).items():
        out.append(EvalResult(task_type="text-generation", dataset_type=name, dataset_name=name, metric_type=t["metric"],
                              metric_value=round(float(t["quantized"]), 4), metric_name=f"{t['metric']} ({t['items']} items)"))
    return out


def _title(job: Job, inputs: CardInputs) -> str:
    base = f"[{inputs.base_model}](https://huggingface.co/{inputs.base_model})" if inputs.base_model else "A model"
    what = ", ".join(formats_of(job))
    return (f"# {inputs.repo.split('/')[-1]}\n\n{base} quantized with **{job.method}** into **{what}** by "
            f"qfarm (job `{job.id}`); every figure below was measured by that job.")


def _made(job: Job) -> str:
    metrics = job.metrics or {}
    params = ", ".join(f"{k}={v}" for k, v in (job.params or {}).items()) or "none"
    rows = [("method", f"{job.method} → {job.format}"), ("options", params)]
    if job.calib:
        text = public_source(job.calib.get("source")) or "a custom text"
        samples = metrics.get("calib_samples_used") or job.calib.get("samples")
        seqlen = metrics.get("calib_seqlen") or job.calib.get("seqlen")
        rows.append(("calibration", f"{text}, {samples} samples × {seqlen} tokens"))
    rows.append(("quantized on", f"{_device(job)}, {num(job.quantize_seconds, '.1f')} s (the library's own work)"))
    versions = ", ".join(f"{k} {v}" for k, v in sorted((job.library_versions or {}).items()) if v)
    if versions:
        rows.append(("libraries", versions))
    return "## How it was made\n\n" + _table(("", ""), rows)


def _accuracy(job: Job) -> str:
    metrics = job.metrics or {}
    source = str((job.eval or {}).get("source") or sources.BUILTIN)
    text = public_source(source) or "a custom text"
    kernel = metrics.get("ppl_kernel") or "-"
    lines = ["## Accuracy", f"Perplexity on {text}, {metrics.get('eval_windows')} windows of {metrics.get('eval_seqlen')} tokens "
             f"({metrics.get('eval_tokens')} tokens predicted), the same tokens for both models: original "
             f"{num(job.ppl_baseline)} → quantized {num(job.ppl_quantized)}, **ratio {num(job.ppl_ratio, '.4f')}** "
             f"(the artifact as loaded by `{kernel}`; lower is better, 1 is the original's)."]
    tasks = metrics.get("tasks") or {}
    if tasks:
        rows = [(name, t["metric"], num(t.get("baseline"), ".4f"), num(t["quantized"], ".4f"),
                 "-" if t.get("recovery") is None else f"{t['recovery'] * 100:.1f} %", str(t.get("items")))
                for name, t in tasks.items()]
        lines.append("Tasks (lm-evaluation-harness):\n\n" + _table(("task", "metric", "original", "quantized", "recovery", "items"), rows))
    return "\n\n".join(lines)


def _serving(job: Job) -> str:
    if job.weights_bytes is None and job.serve_tokens_per_s is None:
        return ""
    kernel = job.serve_kernel or "-"
    rows = [("weights in memory", size(job.weights_bytes_baseline), size(job.weights_bytes)),
            (f"serve VRAM (batch 1, `{kernel}` on {_device(job)})", size(job.serve_vram_baseline_bytes), size(job.serve_vram_bytes)),
            (f"decode tokens/s (batch 1, `{kernel}`)", num(job.serve_tokens_per_s_baseline, ".1f"), num(job.serve_tokens_per_s, ".1f"))]
    where = ("torch's peak over the load, three windows and a decode" if job.serve_vram_bytes is not None
             else "not measured (a CPU worker, or a runtime that holds no GPU memory)")
    return "## Memory and speed\n\n" + _table(("", "original", "quantized"), rows) + f"\n\nServe VRAM: {where}."


def _device(job: Job) -> str:
    return job.gpu_name if job.gpu_name and job.gpu_name != "cpu" else "a CPU"


def _gguf_files(job: Job) -> str:
    metrics = job.metrics or {}
    made, measured = metrics.get("gguf") or {}, metrics.get("formats") or {}
    if not made:
        return ""
    rows = []
    for label, f in made.items():
        m = measured.get(label) or {}
        types = ", ".join(f"{t} {n}" for t, n in (f.get("tensor_types") or {}).items())
        rows.append((f"`{f['file']}`", label, size(f.get("bytes")), num(m.get("ppl_ratio"), ".4f"), m.get("ppl_kernel") or "-",
                     num(m.get("serve_tokens_per_s"), ".1f"), "yes" if f.get("imatrix") else "no", types))
    notes = [f"{label}: {f['fallback']}" for label, f in made.items() if f.get("fallback")]
    text = "## GGUF files\n\n" + _table(("file", "format", "size", "ppl ratio", "measured on", "decode tok/s", "imatrix",
                                         "tensor types"), rows)
    return text + ("\n\n" + "\n".join(f"- {n}" for n in notes) if notes else "")


def _usage(job: Job, repo: str) -> str:
    if job.method == "gguf":
        first = formats_of(job)[0]
        tag = first.upper()
        file = ((job.metrics or {}).get("gguf") or {}).get(first, {}).get("file", f"model-{first}.gguf")
        return ("## Use it\n\nllama.cpp:\n\n```sh\n"
                f"llama-cli -hf {repo}:{tag}\nllama-server -m {file}   # a downloaded file\n```\n\n"
                f"Ollama:\n\n```sh\nollama run hf.co/{repo}:{tag}\n```\n\n"
                "transformers (dequantizes to a dense model):\n\n```python\n"
                "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
                f'model = AutoModelForCausalLM.from_pretrained("{repo}", gguf_file="{file}")\n'
                f'tokenizer = AutoTokenizer.from_pretrained("{repo}", gguf_file="{file}")\n```')
    text = ("## Use it\n\ntransformers:\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f'model = AutoModelForCausalLM.from_pretrained("{repo}", device_map="auto")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{repo}")\n```')
    vllm = _vllm(job)
    if vllm:
        text += f"\n\nvLLM:\n\n```sh\n{vllm.format(repo=repo)}\n```"
    return text


def _vllm(job: Job) -> str | None:
    """How vLLM serves the artifact's format, where it does."""
    if job.format in ("compressed-tensors", "gptq", "awq"):
        return "vllm serve {repo}"
    if job.method in ("nf4", "fp4"):
        return "vllm serve {repo} --quantization bitsandbytes"
    return None  # LLM.int8() checkpoints: vLLM has no kernel for them


def _reproduce(job: Job, base_model: str | None) -> str:
    model = job.model if sources.model_source_kind(job.model) == "hub" else (base_model or "MODEL")
    args = ["qfarm", "submit", model, "--method", job.method]
    method = catalog.get(job.method)
    if job.format != method.parse_format(None):
        args += ["--format", job.format]
    for f in method.options.knobs():
        value = (job.params or {}).get(f.name, f.default)
        if value == f.default:
            continue
        args += [cli_name(f.name) if value else off_flag(f)] if isinstance(f.default, bool) else [cli_name(f.name), str(value)]
    metrics = job.metrics or {}
    if job.calib:
        args += ["--calib", public_source(job.calib.get("source")) or "YOUR_TEXT",
                 "--calib-samples", str(metrics.get("calib_samples_used") or job.calib.get("samples")),
                 "--calib-seqlen", str(metrics.get("calib_seqlen") or job.calib.get("seqlen"))]
    evals = job.eval or {}
    args += ["--eval", public_source(evals.get("source")) or "YOUR_TEXT", "--eval-seqlen", str(metrics.get("eval_seqlen")),
             "--eval-windows", str(metrics.get("eval_windows"))]
    if evals.get("tasks"):
        args += ["--tasks", ",".join(evals["tasks"])]
        if evals.get("tasks_limit"):
            args += ["--limit", str(evals["tasks_limit"])]
    if job.max_vram_bytes:
        args += ["--max-vram", str(job.max_vram_bytes)]
    placeholders = [p for p in ("MODEL", "YOUR_TEXT") if p in args]
    note = f" ({' and '.join(placeholders)}: the team's own, not public)" if placeholders else ""
    return f"## Reproduce{note}\n\n```sh\n{shlex.join(args)}\n```"


def _table(header: tuple[str, ...], rows: Sequence[tuple[object, ...]]) -> str:
    def cell(v: object) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
