"""Calibration and evaluation text sources and token windows."""

import json

import pytest
from transformers import AutoTokenizer

from api_client.errors import QFarmError
from worker import texts


def test_builtin_texts_are_the_shipped_books():
    assert "News from Nowhere" in texts.builtin_text("calib")[:500]
    assert "Log School-House" in texts.builtin_text("eval")[:500]


def test_jsonl_text_field_is_read(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"text": "first"}) + "\n\n" + json.dumps({"text": "second", "id": 2}) + "\n")
    assert texts.load_text(str(f), "calib") == "first\n\nsecond"
    f.write_text('{"prompt": "x"}\n')
    with pytest.raises(QFarmError, match="line 1 has no 'text' string field"):
        texts.load_text(str(f), "calib")


def test_s3_object(bucket, aws_env, tmp_path):
    from api_client.infra.storage.s3 import s3_client

    s3_client(aws_env).put_object(Bucket=bucket, Key="data/calib.txt", Body=b"hello from s3")
    assert texts.load_text(f"s3://{bucket}/data/calib.txt", "calib") == "hello from s3"


def test_missing_file_and_unreachable_hub(tmp_path, monkeypatch):
    with pytest.raises(QFarmError, match="does not exist on this worker"):
        texts.load_text(str(tmp_path / "nope.txt"), "calib")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(QFarmError, match="cannot load dataset wikitext from the Hugging Face hub"):
        texts.load_text("hf:wikitext:wikitext-2-raw-v1@train", "calib")


def test_windows_are_consecutive_and_full(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    text = texts.builtin_text("eval")
    windows = texts.token_windows(tok, text, 64, 10)
    assert len(windows) == 10 and all(len(w) == 64 for w in windows)
    ids = tok(text[:20000], add_special_tokens=False)["input_ids"]
    assert [t for w in windows[:3] for t in w] == ids[:192]
    assert texts.token_windows(tok, "short", 64, None) == []


def test_carriage_returns_are_read_as_newlines(tmp_path):
    # Gutenberg books ship with CRLF; a model trained on text read in
    # Python's text mode never saw "\r", and perplexity on it balloons.
    f = tmp_path / "crlf.txt"
    f.write_bytes(b"one\r\ntwo\rthree\n")
    assert texts.load_text(str(f), "eval") == "one\ntwo\nthree\n"
    assert "\r" not in texts.builtin_text("eval")
