"""What is learnt from a checkpoint's files without loading it."""

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from api_client import checkpoint
from api_client.errors import SpecError


def test_reads_shapes_and_size_from_safetensors_headers(tiny_model):
    info = checkpoint.inspect(tiny_model)
    linears = info.quantizable_linears()
    assert linears["model.layers.0.mlp.down_proj"] == (128, 256)
    assert linears["model.layers.1.self_attn.q_proj"] == (128, 128)
    assert not any("embed" in n or "lm_head" in n for n in linears)
    assert len(linears) == 2 * 7
    on_disk = sum(f.stat().st_size for f in tiny_model.glob("*.safetensors"))
    assert 0.95 * on_disk < info.weight_bytes <= on_disk


def test_group_size_must_divide_every_linear(tiny_model):
    info = checkpoint.inspect(tiny_model)
    checkpoint.check_quantizable(info, 128)
    checkpoint.check_quantizable(info, 64)
    info.shapes["model.layers.0.mlp.down_proj.weight"] = (128, 320)
    with pytest.raises(SpecError, match="group size 128 does not divide the 320 input features of model.layers.0.mlp.down_proj"):
        checkpoint.check_quantizable(info, 128)


def test_model_without_linear_layers_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["EmbedOnly"]}))
    save_file({"model.embed_tokens.weight": torch.zeros(16, 8), "model.norm.weight": torch.ones(8)},
              str(tmp_path / "model.safetensors"))
    with pytest.raises(SpecError, match="EmbedOnly at .* has no linear layers to quantize"):
        checkpoint.check_quantizable(checkpoint.inspect(tmp_path), 128)


def test_already_quantized_checkpoint_is_refused(tiny_model, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(tiny_model, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SpecError, match="already quantized \\(gptq\\)"):
        checkpoint.check_quantizable(checkpoint.inspect(copy), 128)


def test_directory_without_weights_or_with_broken_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SpecError, match="not valid JSON"):
        checkpoint.inspect(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SpecError, match="has no \\*.safetensors"):
        checkpoint.inspect(tmp_path)
