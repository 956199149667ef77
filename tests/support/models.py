"""Models for the tests: a tiny random Llama with a small trained tokenizer:
real shapes, real files, seconds to build."""

from __future__ import annotations

import shutil
from pathlib import Path


def build_tiny_llama(dest: Path, hidden: int = 128, layers: int = 2, intermediate: int = 256) -> Path:
    """A random Llama with a small byte-level BPE tokenizer trained on the
    built-in calibration text."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from worker.texts import builtin_text

    dest.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([builtin_text("calib")[:200_000]], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(dest)
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.float16).save_pretrained(dest)
    return dest


def copy_model(src: Path, dest: Path) -> Path:
    """A private copy of a model directory, to change or break."""
    shutil.copytree(src, dest)
    return dest
