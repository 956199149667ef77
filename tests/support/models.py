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


def windows(model_dir: Path, n: int = 4, seqlen: int = 128):
    """`n` windows of `seqlen` tokens of the built-in evaluation text, as the model's tokenizer cuts them."""
    from transformers import AutoTokenizer

    from worker.texts import builtin_text

    ids = AutoTokenizer.from_pretrained(model_dir)(builtin_text("eval")[:40_000], return_tensors="pt").input_ids[0]
    return ids[: n * seqlen].reshape(n, seqlen)


def logits(model_dir: Path, tokens):
    """The model's next-token logits on `tokens`, loaded as a user loads an artifact."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, device_map="cpu")
    with torch.no_grad():
        return model(tokens).logits.float()


# Bounds on an artifact's next-token logits against the original's, by bits
# per weight: the share of positions with the same most likely token (at
# least), the relative error (at most). See `agreement` for what they rest on.
BOUNDS = {4: (0.5, 0.35), 8: (0.9, 0.05)}


def agreement(reference, other) -> tuple[float, float]:
    """How close `other`'s logits are to `reference`'s: the share of positions
    whose most likely next token is the same, and the error's norm relative to
    the reference's spread. An artifact of garbage weights scores ~0 and ~1.2
    on the tiny random Llama; its 4-bit artifacts 0.6-0.8 and 0.13-0.21, its
    8-bit ones 0.96-0.98 and 0.007-0.014 (measured on every method of
    tests/test_methods.py)."""
    same = (other.argmax(-1) == reference.argmax(-1)).float().mean().item()
    spread = reference - reference.mean(-1, keepdim=True)
    return same, ((other - reference).norm() / spread.norm()).item()
