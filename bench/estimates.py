"""The submit-time estimate (api_client/app/estimate.py) beside the measured job
time of every stored bench row: `python -m bench.estimates`.

Rows come from bench/results/*.json; each row's job settings are those its
suite ran with (bench/bench.py and bench/RESULTS.md say which)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api_client.app import estimate  # noqa: E402

# The two models of the H100 suites: the reference Llama and the 7B shape
# (hidden 4096, 32 layers, intermediate 11008, vocab 32000, untied).
REFMODEL = dict(params_m=13.83, layers=6, context=2048)
LLAMA_7B = dict(params_m=6738.4, layers=32, context=4096)


def settings_of(row: dict, suite: str) -> dict:
    """The estimate's inputs for a stored row of `suite`."""
    weight_gb = (row.get("model_bytes") or 0) / 1e9
    calibrated = row["method"] in ("gptq", "awq")
    if suite == "quickstart":  # every default of the worker that ran it
        return dict(**REFMODEL, weight_gb=weight_gb, calib_samples=None, calib_seqlen=None, eval_seqlen=None,
                    eval_windows=None, eval_text_tokens=80_325, decode_tokens=64)
    if suite == "refmodel":  # 128 × 256 calibration; all 315 windows of 256 tokens
        return dict(**REFMODEL, weight_gb=weight_gb, calib_samples=128 if calibrated else None, calib_seqlen=256,
                    eval_seqlen=256, eval_windows=None, eval_text_tokens=80_325, decode_tokens=64)
    return dict(**LLAMA_7B, weight_gb=weight_gb, calib_samples=128 if calibrated else None, calib_seqlen=256,
                eval_seqlen=2048, eval_windows=4, eval_text_tokens=80_325, decode_tokens=32,
                max_vram_gb=(row.get("max_vram_bytes") or 0) / 1e9 or None)


def main() -> None:
    print("| suite | job | device | measured job s | estimate s | measured / estimate |")
    print("|---|---|---|---|---|---|")
    for path in sorted((ROOT / "bench" / "results").glob("*.json")):
        suite = "refmodel" if "refmodel" in path.name else "quickstart" if "quickstart" in path.name else "big"
        data = json.loads(path.read_text())
        rows = [r for v in (data.values() if isinstance(data, dict) else [data]) for r in (v if isinstance(v, list) else v.get("rows", []))]
        for r in rows:
            if r.get("state") != "succeeded" or not r.get("wall_seconds"):
                continue
            gpu = r.get("gpu_name") or "cpu"
            est = estimate.estimate(r["method"], r["format"], gpu_name=gpu, **settings_of(r, suite)).seconds
            if est:
                print(f"| {suite} | {r['label']} | {gpu.replace('NVIDIA ', '')} | {r['wall_seconds']:.1f} | {est:.1f} | "
                      f"{r['wall_seconds'] / est:.2f} |")


if __name__ == "__main__":
    main()
