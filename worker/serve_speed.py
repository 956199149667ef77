"""How fast a loaded model generates, timed the way a server runs it, so the
speed of a quantized model and of its original compare as a team will see
them.

transformers' `generate` spends 35-65 ms of Python and kernel launches per
token on a 7B model, far more than the weights take to read at batch 1
(bench/RESULTS.md §8): timed that way a W4 model looks slower than bf16 when
a serving engine runs it 2-3× faster. Here a greedy decode runs on a static
KV cache (transformers' StaticCache: fixed shapes, the position kept on the
device), and on a GPU its one-token step is captured once in a CUDA graph
and replayed for every token, the next token chosen and fed back inside the
graph, so no Python runs between tokens. That path is `hf-static-cudagraph`.

Where the step cannot be captured, the same loop runs eagerly
(`hf-static-eager`) and the reason is recorded, never an error: a kernel
that synchronizes with the host (bitsandbytes' LLM.int8 finds its outlier
columns with a data-dependent `nonzero`), weights offloaded to CPU memory, a
capture that fails, or a captured step whose logits differ from the eager
step's. On a CPU the eager path runs, and says so.

Timed: the prompt's prefill (one forward pass over batch × prompt tokens)
and the decode steps after it, each repeat from an empty cache; the first
run (the capture, the kernels' first launches, Triton's autotuning) is a
warm-up and not counted. Figures are the mean and standard deviation over
the repeats.
"""

from __future__ import annotations

import inspect
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

GRAPH = "hf-static-cudagraph"
EAGER = "hf-static-eager"
# transformers' generate, where a model cannot decode on a static cache (its
# own cache class, remote code): the prefill is not timed apart there.
GENERATE = "hf-generate"

# Repeats after the warm-up (a CPU worker's figure only shows the path runs:
# two, the fewest with a spread), and the seconds they may take: a repeat is
# not started if it would end past them (as long as the last one took), so a
# slow eager path (LLM.int8 decodes about 10 tokens/s at batch 1 on an H200)
# gets fewer, and a figure of one run has no spread.
REPEATS = {"cuda": 3, "cpu": 2}
BUDGET_S = 15.0
# The warm-up's new tokens: its steps run what every later step runs (the
# graph's first replays, or the eager kernels' first launches and autotuning).
WARMUP_TOKENS = 8
# A captured step's logits may differ from the eager step's by this share of
# their largest magnitude (both run the same kernels: they are equal but for
# the order of a reduction).
GRAPH_TOLERANCE = 1e-2


@dataclass
class Timing:
    """One shape (batch × prompt tokens, then new tokens) on one model."""

    method: str
    batch: int
    prompt_tokens: int
    new_tokens: int
    prefill_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)
    # Why the decode step runs eagerly on a GPU (None where it is captured, or on a CPU).
    fallback: str | None = None
    # The greedy tokens of the last repeat, [batch][new_tokens] (what a test checks).
    tokens: list[list[int]] = field(default_factory=list)

    @property
    def decode_tokens_per_s(self) -> list[float]:
        """Tokens the decode steps produced per second, each repeat: the first
        new token comes from the prefill, the rest one step each."""
        steps = self.new_tokens - 1
        return [self.batch * steps / s for s in self.decode_s if s > 0]

    @property
    def prefill_tokens_per_s(self) -> list[float]:
        return [self.batch * self.prompt_tokens / s for s in self.prefill_s if s > 0]

    @property
    def throughput(self) -> list[float]:
        """New tokens per second of the whole request (prefill included)."""
        return [self.batch * self.new_tokens / (p + d) for p, d in zip(self.prefill_s, self.decode_s, strict=True)
                if p + d > 0]

    def summary(self) -> dict[str, Any]:
        """The figures a job records: each a mean over the repeats with its
        standard deviation (`…_sd`), the method and why it is not the graph."""
        out: dict[str, Any] = {"method": self.method, "shape": self.shape}
        for name, values in (("decode_tokens_per_s", self.decode_tokens_per_s),
                             ("prefill_tokens_per_s", self.prefill_tokens_per_s), ("tokens_per_s", self.throughput)):
            out[name] = statistics.fmean(values) if values else None
            out[f"{name}_sd"] = statistics.stdev(values) if len(values) > 1 else None
        out["repeats"] = len(self.decode_s)
        out["fallback"] = self.fallback
        return out

    @property
    def shape(self) -> str:
        return f"{self.batch}x{self.prompt_tokens}+{self.new_tokens}"


def measure(model, prompt: list[int], new_tokens: int, batch: int = 1, repeats: int | None = None,
            budget_s: float = BUDGET_S, graphs: bool = True) -> Timing:
    """Greedy generation of `new_tokens` after `prompt` (the same prompt in
    every row of `batch`), timed as the module docstring says. `graphs`
    False keeps a GPU on the eager path (the bench's comparison)."""

    if new_tokens < 2:
        raise ValueError("a decode needs at least 2 new tokens (the first comes from the prefill)")
    device = next(model.parameters()).device
    repeats = repeats or REPEATS.get(device.type, 2)
    try:
        return _static(model, prompt, new_tokens, batch, repeats, budget_s, graphs, device)
    except Exception as exc:
        from worker.gpu import is_oom

        if is_oom(exc):
            raise
        reason = f"no static-cache decode: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    # Outside the except block: the failed attempt's tensors are freed first.
    return _generate(model, prompt, new_tokens, batch, repeats, budget_s, device, reason)


def _static(model, prompt: list[int], new_tokens: int, batch: int, repeats: int, budget_s: float, graphs: bool,
            device: Any) -> Timing:
    import torch

    run = _Run(model, prompt, new_tokens, batch, device)
    timing = Timing(EAGER, batch, len(prompt), new_tokens)
    with torch.inference_mode():
        if device.type == "cuda":
            if not graphs:
                timing.fallback = "CUDA graphs off for this measurement"
            else:
                timing.fallback = run.capture()
                if timing.fallback is None:
                    timing.method = GRAPH
        run.generate(min(new_tokens, WARMUP_TOKENS))  # warm-up: first launches, autotuning, allocator growth
        started = time.perf_counter()
        for i in range(repeats):
            if i and _past_budget(started, timing.prefill_s[-1] + timing.decode_s[-1], budget_s):
                break
            prefill_s, decode_s = run.generate(new_tokens)
            timing.prefill_s.append(prefill_s)
            timing.decode_s.append(decode_s)
        timing.tokens = run.tokens.tolist()
    return timing


def _generate(model, prompt: list[int], new_tokens: int, batch: int, repeats: int, budget_s: float, device: Any,
              reason: str) -> Timing:
    """transformers' greedy `generate`, each repeat timed whole (its decode
    figure then includes the prefill)."""
    import torch

    ids = torch.tensor([prompt] * batch, device=device)
    kwargs: dict[str, Any] = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False,
                              "attention_mask": torch.ones_like(ids)}
    if model.generation_config.pad_token_id is None:
        kwargs["pad_token_id"] = model.generation_config.eos_token_id
    timing = Timing(GENERATE, batch, len(prompt), new_tokens, fallback=reason)
    with torch.inference_mode():
        model.generate(ids, **{**kwargs, "max_new_tokens": min(new_tokens, WARMUP_TOKENS),
                               "min_new_tokens": min(new_tokens, WARMUP_TOKENS)})
        started = time.perf_counter()
        for i in range(repeats):
            if i and _past_budget(started, timing.decode_s[-1], budget_s):
                break
            _sync(device)
            start = time.perf_counter()
            out = model.generate(ids, **kwargs)
            _sync(device)
            timing.prefill_s.append(0.0)
            timing.decode_s.append(time.perf_counter() - start)
        timing.tokens = out[:, ids.shape[1]:].tolist()
    return timing


class _Run:
    """The buffers of one shape: a static cache, the step's input (which the
    step overwrites with the next token), and the generated tokens."""

    def __init__(self, model, prompt: list[int], new_tokens: int, batch: int, device: Any):
        import torch
        from transformers import StaticCache

        self.model, self.device = model, device
        self.prompt = torch.tensor([prompt] * batch, device=device)
        self.cache = StaticCache(config=model.config, max_cache_len=len(prompt) + new_tokens)
        self.next = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.tokens = torch.zeros(batch, new_tokens, dtype=torch.long, device=device)
        self.kwargs: dict[str, Any] = {"past_key_values": self.cache, "use_cache": True}
        if "logits_to_keep" in inspect.signature(model.forward).parameters:
            self.kwargs["logits_to_keep"] = 1  # the last position's logits only
        self.graph: Any = None
        self.logits: Any = None  # the captured step's logits (its static output)

    def step(self):
        """One token for every row: the forward pass at the cache's position,
        the greedy choice written into `next` (the next step's input)."""
        logits = self.model(input_ids=self.next, **self.kwargs).logits[:, -1]
        self.next.copy_(logits.argmax(-1, keepdim=True))
        return logits

    def prefill(self) -> None:
        self.cache.reset()
        logits = self.model(input_ids=self.prompt, **self.kwargs).logits[:, -1]
        self.next.copy_(logits.argmax(-1, keepdim=True))

    def generate(self, new_tokens: int) -> tuple[float, float]:
        """Seconds of the prefill and of the decode steps after it, for
        `new_tokens` (at most the cache's)."""
        start = time.perf_counter()
        self.prefill()
        self.tokens[:, 0:1].copy_(self.next)
        _sync(self.device)
        middle = time.perf_counter()
        for i in range(1, new_tokens):
            if self.graph is not None:
                self.graph.replay()
            else:
                self.step()
            self.tokens[:, i:i + 1].copy_(self.next)
        _sync(self.device)
        return middle - start, time.perf_counter() - middle

    def capture(self) -> str | None:
        """Capture the step in a CUDA graph; None when it is captured and its
        logits equal the eager step's, else why it runs eagerly."""
        import torch

        offloaded = sorted({str(d) for d in (getattr(self.model, "hf_device_map", None) or {}).values()}
                           - {"0", "cuda", "cuda:0"})
        if offloaded:
            return f"weights offloaded to {', '.join(offloaded)}: each step copies them in (no graph)"
        try:
            # Warm up on a side stream (cuBLAS and Triton set up there, as
            # CUDA graph capture wants), with the cache's tensors allocated.
            self.prefill()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self.step()
            torch.cuda.current_stream().wait_stream(side)
            reason = host_syncs(self.step)
            if reason:
                return reason
            self.prefill()
            expected = self.step().float().clone()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.logits = self.step()
            # The captured step against the eager one, from the same state.
            self.prefill()
            graph.replay()
            torch.cuda.synchronize()
            diff = float((self.logits.float() - expected).abs().max())
            scale = float(expected.abs().max()) or 1.0
            if not diff <= GRAPH_TOLERANCE * scale:
                return f"the captured step's logits differ from the eager step's by {diff:.3g} (of {scale:.3g})"
            self.graph = graph
            return None
        except Exception as exc:  # noqa: BLE001 - the eager path is timed instead, with the reason
            self.graph = self.logits = None
            try:
                torch.cuda.synchronize()
            except Exception:  # noqa: BLE001 - a failed capture may leave an error to collect
                pass
            return f"capture failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def host_syncs(step) -> str | None:
    """Run `step` once with CUDA's host-synchronization check set to error:
    a step that waits for the GPU to answer the host (`.item()`, `nonzero`, a
    copy to the CPU) cannot be replayed from a graph. None when it runs clean."""
    import torch

    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    except RuntimeError as exc:
        return f"the decode step synchronizes with the host ({str(exc).splitlines()[0][:160]}): not capturable"
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    return None


def _past_budget(started: float, last_s: float, budget_s: float) -> bool:
    """Whether one more repeat as long as the last would end past the budget."""
    return time.perf_counter() - started + last_s > budget_s


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
