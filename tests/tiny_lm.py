"""A tiny causal LM made on the spot (nothing downloaded): a byte-level BPE tokenizer trained on a
few lines of Python and a randomly initialised GPT-2 of a few layers. Saved with ``save_pretrained`` so the sampler
loads it by path, as it would a real checkpoint."""

from __future__ import annotations

from pathlib import Path

EOS = "<|endoftext|>"

BODIES = [
    "    return float(sum(el))\n",
    "    return float(len(set(el)))\n",
    "    return -float(sum(el))\n",
    "    score = sum(x * x for x in el)\n    return float(score)\n",
    "    return float(el.count(1) - el.count(0))\n",
    "    return float(n - sum(el))\n",
]

CORPUS_LINES = [
    '"""Finds large deletion-correcting codes."""', "import itertools", "import numpy as np",
    "def priority(el: tuple[int, ...], n: int) -> float:", '    """Returns the priority of `el`."""',
    "def priority_v0(el, n):", "def priority_v1(el, n):", "def priority_v2(el, n):",
    '    """Improved version of `priority_v0`."""', "    return 0.0", "for i in range(n):", "    pass",
] + [line for body in BODIES for line in body.splitlines()]


def make_tokenizer(path: Path, vocab_size: int = 400):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([line + "\n" for line in CORPUS_LINES] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS,
                                   pad_token=EOS)
    fast.save_pretrained(path)
    return fast


def make_model(path: Path, *, n_layer: int = 2, n_embd: int = 64, n_head: int = 2, n_positions: int = 2048,
               seed: int = 0) -> Path:
    """Writes a tokenizer and a randomly initialised GPT-2 to ``path``; returns ``path``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = make_tokenizer(path)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(path)
    return path
