"""The job specification: what a user asks for, validated before anything is
queued. The worker reads the same fields back from the job row."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

from api_client.contract import catalog, checkpoint, inputs, lm_eval_tasks, sources
from api_client.contract.catalog import architectures
from api_client.contract.inputs import Inputs
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
        """The numbers; the source is api_client/contract/inputs.py's."""
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
        """The numbers and the flags' combinations; the source and the task
        directory are api_client/contract/inputs.py's."""
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
    # What was found at the model and text sources, looked at once.
    inputs: Inputs | None = None
    model_bytes: int | None = None
    # What the checkpoint's files say (local models only), for the estimate.
    param_count: int | None = None
    layers: int | None = None
    context: int | None = None

    @property
    def model_kind(self) -> str:
        """'local', 'hub' or 's3'."""
        assert self.inputs is not None
        return self.inputs.model.kind


def resolve(spec: JobSpec, found: Inputs | None = None) -> ResolvedSpec:
    """Validate everything that can be checked on the submitting machine:
    the options first (no file is read for a job refused by its flags),
    then every input in one pass (api_client/contract/inputs.py), then the
    model and texts against the method. `found`: inputs already resolved
    for the same model, texts and task directory (a compare group's
    members share them)."""
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
    if spec.priority not in PRIORITY_NAMES:
        raise SpecError(f"--priority must be one of {'/'.join(PRIORITY_NAMES)}, not {spec.priority!r}")
    if spec.weights not in WEIGHTS_PLACEMENTS:
        raise SpecError(f"--weights must be one of {'/'.join(WEIGHTS_PLACEMENTS)}, not {spec.weights!r}")
    max_vram = parse_size(spec.max_vram)
    if max_vram is not None and max_vram < 256 * 2**20:
        raise SpecError(f"--max-vram {spec.max_vram} is too small to run anything (at least 256MiB)")

    if found is None:
        found = inputs.resolve(spec.model, calib.source if calib else None, spec.eval.source, spec.eval.tasks_dir,
                               spec.eval.tasks, spec.allow_remote_code)
    elif calib is None:
        found = dataclasses.replace(found, calib=None)
    if found.tasks_dir is not None:
        spec.eval.tasks_dir = str(found.tasks_dir)
    info = found.model.checkpoint
    if info is not None:
        checkpoint.check_group_size(info, method.group_size(params))
    if found.model.config is not None:
        architectures.check(found.model.config, method.name, fmt)
    if info is not None:
        method.check_model(info, params, fmt)
    inputs.check_windows(found, calib.seqlen if calib else None, calib.samples if calib else None, spec.eval.seqlen,
                         GPU_DEFAULTS.calib_seqlen)
    return ResolvedSpec(
        model=found.model.ref, method=method.name, format=fmt, params=params.as_dict(),
        calib=calib, eval=spec.eval, max_vram_bytes=max_vram, weights=spec.weights,
        allow_remote_code=bool(spec.allow_remote_code), priority=spec.priority, min_capability=method.min_capability,
        inputs=found, model_bytes=info.weight_bytes if info else None, param_count=(info.params or None) if info else None,
        layers=info.layers if info else None, context=info.context if info else None,
    )
