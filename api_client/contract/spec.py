"""The job specification: what a user asks for, validated before anything is
queued. The worker reads the same fields back from the job row."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from api_client.contract import catalog, lm_eval_tasks, sources
from api_client.contract.catalog import architectures
from api_client.contract.checkpoint import CheckpointInfo
from api_client.errors import SpecError
from api_client.sizes import parse_size

WEIGHTS_PLACEMENTS = ("auto", "gpu", "cpu")
PRIORITY_NAMES = ("high", "normal", "low")


@dataclass(frozen=True)
class Defaults:
    """What a job runs with where its submitter set nothing, by the kind of
    worker that takes it. A CPU worker is for small models and first tries:
    its defaults are sized so the quickstart (GPTQ of a 13.8M-parameter
    model) finishes in about a minute on two cores, where the GPU defaults
    took six (bench/RESULTS.md); the job records what it used."""

    calib_samples: int
    calib_seqlen: int
    # Perplexity windows: tokens each (capped by the model's context), and
    # how many (None: the whole text).
    eval_seqlen: int
    eval_windows: int | None


GPU_DEFAULTS = Defaults(calib_samples=128, calib_seqlen=512, eval_seqlen=2048, eval_windows=None)
CPU_DEFAULTS = Defaults(calib_samples=32, calib_seqlen=512, eval_seqlen=512, eval_windows=40)


def defaults_for(on_gpu: bool) -> Defaults:
    return GPU_DEFAULTS if on_gpu else CPU_DEFAULTS


@dataclass
class CalibSpec:
    source: str = sources.BUILTIN
    # None: the worker's default (Defaults).
    samples: int | None = None
    seqlen: int | None = None

    def validate(self) -> None:
        if sources.text_source_kind(self.source) == "local":
            sources.check_local_text(self.source, "calibration")
        if self.samples is not None and not 1 <= self.samples <= 100_000:
            raise SpecError(f"--calib-samples must be between 1 and 100000, not {self.samples}")
        if self.seqlen is not None and not 16 <= self.seqlen <= 131_072:
            raise SpecError(f"--calib-seqlen must be between 16 and 131072, not {self.seqlen}")

    def resolved(self, defaults: Defaults) -> CalibSpec:
        return CalibSpec(self.source, self.samples or defaults.calib_samples, self.seqlen or defaults.calib_seqlen)


@dataclass
class EvalSpec:
    source: str = sources.BUILTIN
    # Tokens per window; None: the worker's default (Defaults), capped at the model's context.
    seqlen: int | None = None
    # At most this many windows; None: the worker's default (the whole text on a GPU).
    windows: int | None = None
    # Decode speed is measured by generating this many tokens at batch 1.
    decode_tokens: int = 64
    # lm-eval task names (api_client/contract/lm_eval_tasks.py; `builtin` is qfarm's own),
    # a local directory of task YAML (uploaded with the job), and items per task.
    tasks: list[str] | None = None
    tasks_dir: str | None = None
    tasks_limit: int | None = None
    # "full": measure the original model with every evaluator; "perplexity":
    # only what the job's own ratio needs (members of a compare group but
    # one, whose baseline stands for the group's).
    baseline: str = "full"

    def validate(self) -> None:
        if sources.text_source_kind(self.source) == "local":
            sources.check_local_text(self.source, "evaluation")
        if self.seqlen is not None and not 16 <= self.seqlen <= 131_072:
            raise SpecError(f"--eval-seqlen must be between 16 and 131072, not {self.seqlen}")
        if self.windows is not None and self.windows < 1:
            raise SpecError(f"--eval-windows must be at least 1, not {self.windows}")
        if not 0 <= self.decode_tokens <= 4096:
            raise SpecError(f"--decode-tokens must be between 0 and 4096, not {self.decode_tokens}")
        if self.tasks is not None:
            self.tasks = lm_eval_tasks.parse_names(",".join(self.tasks))
        if self.tasks_dir is not None:
            if not self.tasks:
                raise SpecError("--tasks-dir needs --tasks naming the tasks to run from it")
            if "://" in self.tasks_dir:
                raise SpecError("--tasks-dir takes a local directory (it is uploaded with the job)")
        if self.tasks_limit is not None and (not self.tasks or self.tasks_limit < 1):
            raise SpecError("--limit caps the items of each task: it needs --tasks and a count of at least 1")
        if self.baseline not in ("full", "perplexity"):
            raise SpecError(f"baseline must be full or perplexity, not {self.baseline!r}")


@dataclass
class JobSpec:
    model: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    format: str | None = None
    calib: CalibSpec | None = None
    eval: EvalSpec = field(default_factory=EvalSpec)
    max_vram: int | str | None = None
    weights: str = "auto"
    # Run the model's own code (auto_map, *.py) and publish it with the
    # artifact; only workers started with --allow-remote-code take such jobs.
    allow_remote_code: bool = False
    # high, normal or low: the order a queue serves its jobs in.
    priority: str = "normal"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ResolvedSpec:
    """A JobSpec after validation: typed parameters, defaults filled in."""

    model: str
    model_kind: str
    method: str
    format: str
    params: dict[str, Any]
    calib: CalibSpec | None
    eval: EvalSpec
    max_vram_bytes: int | None
    weights: str
    allow_remote_code: bool = False
    priority: str = "normal"
    min_capability: tuple[int, int] | None = None
    model_bytes: int | None = None
    # What the checkpoint's files say (local models only), for the estimate.
    param_count: int | None = None
    layers: int | None = None
    context: int | None = None


def _check_texts_fit(info: CheckpointInfo, calib: CalibSpec | None, evals: EvalSpec) -> None:
    """Windows no longer than the model's context, and texts long enough for
    the windows asked for, counted with the model's own tokenizer where it
    has a tokenizer.json (and the `tokenizers` library is installed)."""
    context = info.context
    for flag, seqlen in (("--calib-seqlen", calib.seqlen if calib else None), ("--eval-seqlen", evals.seqlen)):
        if isinstance(context, int) and seqlen is not None and seqlen > context:
            raise SpecError(f"{flag} {seqlen} is longer than the model's context of {context} tokens "
                            f"(max_position_embeddings in config.json)")
    tokenizer = next((f.target for f in info.files if f.name == "tokenizer.json"), None)
    if tokenizer is None:
        return
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return
    tok = Tokenizer.from_file(str(tokenizer))
    if calib is not None and sources.text_source_kind(calib.source) in ("builtin", "local"):
        # A count asked for must be there; the worker's default count takes
        # what the text holds (and says so), but needs one window at least.
        seqlen = calib.seqlen or GPU_DEFAULTS.calib_seqlen
        have = _windows(tok, calib.source, "calib", seqlen, calib.samples)
        if have == 0:
            raise SpecError(f"calibration text {calib.source} is shorter than one window of {seqlen} tokens with this "
                            f"model's tokenizer: give a longer text or shorter windows (--calib-seqlen)")
        if calib.samples is not None and have < calib.samples:
            raise SpecError(f"calibration text {calib.source} holds {have} windows of {seqlen} tokens with this "
                            f"model's tokenizer, fewer than --calib-samples {calib.samples}: ask for {have} or fewer, "
                            f"shorter windows (--calib-seqlen), or a longer text")
    if (sources.text_source_kind(evals.source) in ("builtin", "local") and evals.seqlen is not None
            and _windows(tok, evals.source, "eval", evals.seqlen, 1) < 1):
        raise SpecError(f"evaluation text {evals.source} is shorter than one window of {evals.seqlen} tokens")


def _windows(tok: Any, source: str, purpose: str, seqlen: int, want: int | None = None) -> int:
    """Windows of `seqlen` tokens the text holds (counting at most `want`:
    only as much text is tokenized as that many windows could need)."""
    from api_client.contract import corpus

    if source == sources.BUILTIN:
        text = corpus.builtin_text(purpose)
    else:
        path = Path(source).expanduser()
        text = corpus.decode_text(corpus.read_bounded(path, "text file"), path.name)
    if want:
        text = text[: want * seqlen * 12]  # no token is longer than 12 characters here
    return len(tok.encode(text, add_special_tokens=False).ids) // seqlen


def resolve(spec: JobSpec) -> ResolvedSpec:
    """Validate everything that can be checked on the submitting machine."""
    method = catalog.get(spec.method)
    fmt = method.parse_format(spec.format)
    params = method.parse_params(spec.params, fmt)
    if method.needs_calibration(params, fmt):
        calib = spec.calib or CalibSpec()
        calib.validate()
    else:
        if spec.calib is not None:
            which = f"--method {method.name}" + (f" --format {fmt} with these options" if method.calibrated else "")
            raise SpecError(f"{which} takes no calibration data (--calib, --calib-samples, --calib-seqlen)")
        calib = None
    spec.eval.validate()
    if spec.eval.tasks_dir is not None and spec.eval.tasks:
        spec.eval.tasks_dir = str(lm_eval_tasks.check_tasks_dir(spec.eval.tasks_dir, spec.eval.tasks, spec.allow_remote_code))
    if spec.priority not in PRIORITY_NAMES:
        raise SpecError(f"--priority must be one of {'/'.join(PRIORITY_NAMES)}, not {spec.priority!r}")
    if spec.weights not in WEIGHTS_PLACEMENTS:
        raise SpecError(f"--weights must be one of {'/'.join(WEIGHTS_PLACEMENTS)}, not {spec.weights!r}")
    max_vram = parse_size(spec.max_vram)
    if max_vram is not None and max_vram < 256 * 2**20:
        raise SpecError(f"--max-vram {spec.max_vram} is too small to run anything (at least 256MiB)")

    kind = sources.model_source_kind(spec.model)
    model = spec.model
    model_bytes = params_count = layers = context = None
    if kind == "local":
        from api_client.contract import checkpoint

        path = sources.local_model_path(spec.model)
        info = checkpoint.inspect(path, spec.allow_remote_code)
        checkpoint.check_quantizable(info, method.group_size(params))
        checkpoint.check_tokenizer(info)
        architectures.check(info.config, method.name, fmt)
        method.check_model(info, params, fmt)
        _check_texts_fit(info, calib, spec.eval)
        model, model_bytes = str(path), info.weight_bytes
        params_count = info.params or None
        layers, context = info.layers, info.context
    elif kind == "hub":
        sources.check_hub_model(spec.model)
        hub_config = sources.hub_config(spec.model)
        if hub_config is not None:
            architectures.check(hub_config, method.name, fmt)
    elif kind == "s3":
        sources.check_model_prefix(spec.model, on_worker=False)
    return ResolvedSpec(
        model=model, model_kind=kind, method=method.name, format=fmt, params=params.as_dict(),
        calib=calib, eval=spec.eval, max_vram_bytes=max_vram, weights=spec.weights,
        allow_remote_code=bool(spec.allow_remote_code), priority=spec.priority, min_capability=method.min_capability,
        model_bytes=model_bytes, param_count=params_count, layers=layers, context=context,
    )

