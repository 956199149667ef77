"""What is learnt from a checkpoint's files without loading it."""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import save_file

from api_client.contract import checkpoint
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


def _copy(src, dest):
    dest.mkdir()
    for f in src.iterdir():
        shutil.copy(f, dest / f.name)
    return dest


@pytest.mark.parametrize("target", ["/proc/self/environ", "/etc/passwd"])
def test_a_symlink_out_of_the_model_is_refused(tiny_model, tmp_path, target):
    model = _copy(tiny_model, tmp_path / "m")
    (model / "chat_template.jinja").symlink_to(target)
    with pytest.raises(SpecError, match=f"chat_template.jinja is a symlink to {target}, outside the model directory: refused"):
        checkpoint.inspect(model)


def test_special_files_and_escaping_shard_indexes_are_refused(tiny_model, tmp_path):
    model = _copy(tiny_model, tmp_path / "m")
    os.mkfifo(model / "tokenizer.model")
    with pytest.raises(SpecError, match="tokenizer.model is not a regular file"):
        checkpoint.inspect(model)
    (model / "tokenizer.model").unlink()
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a.weight": "../../secret.safetensors"}}))
    with pytest.raises(SpecError, match="names the shard '../../secret.safetensors', outside the model directory"):
        checkpoint.inspect(model)


def test_inside_links_pass_and_unneeded_or_code_files_are_left_out(tiny_model, tmp_path):
    model = _copy(tiny_model, tmp_path / "m")
    (model / "tokenizer.json").rename(model / "real-tokenizer.bin")
    (model / "tokenizer.json").symlink_to(model / "real-tokenizer.bin")
    (model / "optimizer.pt").write_bytes(b"training state")
    (model / "modeling_x.py").write_text("import os")
    (model / "notes").symlink_to("/etc/passwd")  # not a file a checkpoint needs: never read
    names = {f.name for f in checkpoint.inspect(model).files}
    assert "tokenizer.json" in names and "config.json" in names
    assert not names & {"optimizer.pt", "modeling_x.py", "notes", "real-tokenizer.bin"}
    assert "modeling_x.py" in {f.name for f in checkpoint.inspect(model, remote_code=True).files}


def test_a_hub_cache_snapshot_may_link_into_its_blobs(tiny_model, tmp_path):
    repo = tmp_path / "models--org--tiny"
    blobs, snap = repo / "blobs", repo / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in tiny_model.iterdir():
        shutil.copy(f, blobs / f.name)
        (snap / f.name).symlink_to(f"../../blobs/{f.name}")
    assert checkpoint.inspect(snap).weight_bytes > 0


@pytest.mark.parametrize("header,message", [
    ({"w": {"dtype": "F16"}}, "tensor 'w' has no valid shape"),
    (["not", "a", "dict"], "its header is a list, not an object"),
    ({"w": {"shape": [2, 2]}}, "tensor 'w' has no dtype"),
])
def test_malformed_safetensors_headers_are_one_line(tiny_model, tmp_path, header, message):
    model = _copy(tiny_model, tmp_path / "m")
    raw = json.dumps(header).encode()
    (model / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw)
    with pytest.raises(SpecError, match=message):
        checkpoint.inspect(model)


def test_a_blobs_link_out_of_a_hub_cache_is_refused(tiny_model, tmp_path):
    repo = tmp_path / "models--a--b"
    snap = repo / "snapshots" / "rev1"
    snap.mkdir(parents=True)
    (repo / "blobs").symlink_to("/proc/self")
    for f in tiny_model.iterdir():
        shutil.copy(f, snap / f.name)
    (snap / "chat_template.jinja").symlink_to("../../blobs/environ")
    with pytest.raises(SpecError, match="chat_template.jinja is a symlink to ../../blobs/environ, outside the model directory"):
        checkpoint.inspect(snap)
