"""Build a tiny LLaMA-architecture student and its tokenizer offline (tests, smoke runs, benchmarks).

    python -m lion.student.tiny --out runs/tiny_base [--vocab char] [--hidden 128 --layers 4 --heads 4]

Two tokenizers, both saved as a real Hugging Face tokenizer (`tokenizer.json`) so that
`AutoTokenizer.from_pretrained(DIR)` and `AutoModelForCausalLM.from_pretrained(DIR)` load the result:

- ``char``: one token per character: every printable ASCII character plus newline and tab, and the special
  tokens ``<pad> <s> </s> <unk>``; decoding joins the characters back with nothing in between, so
  ``decode(encode(text)) == text`` for any ASCII text.
- ``bpe``: a byte-level BPE trained on ``corpus`` (a list of strings; a small built-in text when omitted).

The model weights are randomly initialised from ``seed`` (same arguments -> same weights).
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0..3 in both vocabularies
PAD, BOS, EOS, UNK = SPECIALS

_DEFAULT_CORPUS = [
    "Give three tips for staying healthy. Eat a balanced diet, exercise regularly and sleep well.",
    "Write a short poem about the sea. The waves roll in and out, the gulls cry above the sand.",
    "Explain why the sky is blue. Sunlight is scattered by the molecules of the air, blue light the most.",
    "Translate the sentence into French. Le chat dort sur le canapé.",
    "What is the capital of France? The capital of France is Paris.",
    "Summarize the following text in one sentence. The report describes sales growth in 2023.",
    "Reverse the word: apple. elppa",
    "Convert to uppercase: hello. HELLO",
    "Add the numbers 12 and 30. 42",
]


def char_vocab() -> list[str]:
    """The character vocabulary, specials first (stable order: ids never change between versions)."""
    chars = ["\n", "\t"] + [chr(c) for c in range(32, 127)]
    return SPECIALS + chars


def build_char_tokenizer():  # -> tokenizers.Tokenizer
    from tokenizers import Tokenizer, decoders, models

    vocab = {tok: i for i, tok in enumerate(char_vocab())}
    # BPE with no merges = one token per character; characters outside the vocabulary map to <unk>
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK, ignore_merges=True))
    tok.add_special_tokens(SPECIALS)
    tok.decoder = decoders.Fuse()  # join characters with nothing in between
    return tok


def build_bpe_tokenizer(corpus: Sequence[str], vocab_size: int = 1000):  # -> tokenizers.Tokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    return tok


def wrap_tokenizer(tok, model_max_length: int):  # -> transformers tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,  # else " ." would be decoded as "."
        model_max_length=model_max_length,
    )


def build_tiny(
    out_dir: Path | str,
    *,
    vocab: str = "char",
    hidden: int = 128,
    layers: int = 4,
    heads: int = 4,
    corpus: list[str] | None = None,
    seed: int = 0,
    intermediate: int | None = None,
    max_position_embeddings: int = 2048,
    bpe_vocab_size: int = 1000,
) -> Path:
    """Build and save a tiny LLaMA + tokenizer into `out_dir` (written to a temp dir, then renamed)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if vocab not in ("char", "bpe"):
        raise ValueError(f"vocab must be 'char' or 'bpe', got {vocab!r}")
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    out = Path(out_dir)
    raw = build_char_tokenizer() if vocab == "char" else build_bpe_tokenizer(corpus or _DEFAULT_CORPUS, bpe_vocab_size)
    tokenizer = wrap_tokenizer(raw, max_position_embeddings)
    if intermediate is None:
        intermediate = max(8, int(round(hidden * 8 / 3 / 8)) * 8)  # the LLaMA ratio, rounded to a multiple of 8
    config = LlamaConfig(
        vocab_size=raw.get_vocab_size(),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a one-shard "Writing model shards" bar is only noise here
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    meta = {"builder": "lion.student.tiny", "vocab": vocab, "hidden": hidden, "layers": layers, "heads": heads,
            "intermediate": intermediate, "seed": seed, "params": sum(p.numel() for p in model.parameters())}
    (tmp / "lion_tiny.json").write_text(json.dumps(meta, indent=1))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


TINY_OPTIONS = ("vocab", "hidden", "layers", "heads", "corpus", "seed", "intermediate", "max_position_embeddings",
                "bpe_vocab_size")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lion.student.tiny", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path, help="directory to write the model and tokenizer into")
    p.add_argument("--vocab", choices=["char", "bpe"], default="char")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corpus", type=Path, help="bpe: a text file to train the tokenizer on (one document a line)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from ..errors import DataError

    args = make_parser().parse_args(argv)
    corpus = None
    if args.corpus is not None:
        if not args.corpus.is_file():
            raise DataError(f"{args.corpus}: corpus file does not exist")
        corpus = [line for line in args.corpus.read_text().splitlines() if line.strip()]
    out = build_tiny(args.out, vocab=args.vocab, hidden=args.hidden, layers=args.layers, heads=args.heads,
                     corpus=corpus, seed=args.seed)
    meta = json.loads((out / "lion_tiny.json").read_text())
    print(f"tiny student ({meta['params']:,} parameters, {args.vocab} vocabulary) written to {out}")
    return 0


if __name__ == "__main__":
    from ..errors import cli_main

    cli_main(main)


__all__ = ["build_tiny", "char_vocab", "TINY_OPTIONS"]
