"""Student data: prompt format, loss masking, dropping, packing, and the tiny model/tokenizer builder.

    python -m pytest -q tests/test_student_data.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import shared_file

from lion.config import StudentConfig
from lion.errors import ConfigError, DataError
from lion.student.data import (
    IGNORE,
    PackedCollator,
    PaddedCollator,
    encode_prompt,
    format_prompt,
    pack_rows,
    tokenize_examples,
)


def _tok(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def test_alpaca_prompt_format_with_and_without_input() -> None:
    assert format_prompt("Add 2 and 3.") == "### Instruction:\nAdd 2 and 3.\n\n### Response:\n"
    assert format_prompt("Translate.", "Bonjour") == (
        "### Instruction:\nTranslate.\n\n### Input:\nBonjour\n\n### Response:\n"
    )
    assert format_prompt("Translate.", "   ") == format_prompt("Translate.")
    assert format_prompt("Reverse: abc", fmt="plain") == "Q: Reverse: abc\nA: "
    assert format_prompt("Translate.", "Bonjour", fmt="plain") == "Q: Translate.\nBonjour\nA: "
    with pytest.raises(ConfigError, match="student.prompt_format"):
        format_prompt("x", fmt="vicuna")


def test_chat_template_is_used_when_configured_and_missing_template_is_a_config_error(tiny_char_base) -> None:
    tok = _tok(tiny_char_base)
    with pytest.raises(ConfigError, match="student.prompt_format"):
        format_prompt("Hi", fmt="chat_template", tokenizer=tok)
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}<assistant>"
    assert format_prompt("Hi", "there", fmt="chat_template", tokenizer=tok) == "<user>Hi\n\nthere\n<assistant>"


def test_char_tokenizer_round_trips_text_exactly(tiny_char_base) -> None:
    tok = _tok(tiny_char_base)
    text = "Hello , world !  Two  spaces.\n\tTabbed: {x} = [1, 2] ; 'quote' \"dq\" ~`"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)  # one token per character
    assert tok.decode(ids) == text  # nothing inserted between characters, " ," kept
    assert tok.decode([tok.bos_token_id, *ids, tok.eos_token_id], skip_special_tokens=True) == text
    assert tok("é", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]


@pytest.mark.parametrize("vocab", ["char", "bpe"])
def test_supervised_tokens_decode_to_exactly_the_response_plus_eos(tmp_path, tiny_char_base, vocab) -> None:
    from lion.student.tiny import build_tiny

    path = tiny_char_base if vocab == "char" else build_tiny(
        tmp_path / "bpe", vocab="bpe", hidden=16, layers=1, heads=2, bpe_vocab_size=300,
        corpus=["The quick brown fox jumps over the lazy dog.", "Answer: 42, of course!"] * 20)
    tok = _tok(path)
    rows = [{"instruction": "Say something.", "input": "", "output": "The answer is 42 , of course!"},
            {"instruction": "Echo.", "input": "with input", "output": " leading space and trailing "}]
    tokd, stats = tokenize_examples(tok, rows, max_length=256)
    assert stats.n_dropped == 0 and len(tokd) == 2
    for t, row in zip(tokd, rows, strict=True):
        sup = [i for i, lab in zip(t.input_ids, t.labels, strict=True) if lab != IGNORE]
        assert sup[-1] == tok.eos_token_id
        assert tok.decode(sup[:-1]) == row["output"]
        assert tok.decode(sup) == row["output"] + tok.eos_token
        # the prompt part is exactly BOS + the formatted prompt, and none of it is supervised
        prompt = format_prompt(row["instruction"], row["input"])
        n = len(encode_prompt(tok, prompt))
        assert t.input_ids[0] == tok.bos_token_id and all(lab == IGNORE for lab in t.labels[:n])
        assert tok.decode(t.input_ids[1:n]) == prompt


def test_prompt_filling_max_length_is_dropped_and_counted_long_response_truncated(tiny_char_base) -> None:
    tok = _tok(tiny_char_base)
    short = {"instruction": "Hi", "output": "x" * 100}
    long_prompt = {"id": "p1", "instruction": "y" * 200, "output": "z"}
    tokd, stats = tokenize_examples(tok, [short, long_prompt], max_length=64)
    assert stats.n_examples == 2 and stats.n_dropped == 1 and stats.dropped_ids == ["p1"]
    assert stats.n_truncated == 1 and len(tokd[0]) == 64
    assert any(lab != IGNORE for lab in tokd[0].labels)
    # the boundary: a prompt of exactly max_length tokens has no room for a supervised token
    n_prompt = len(encode_prompt(tok, format_prompt("Hi")))
    _, stats = tokenize_examples(tok, [short], max_length=n_prompt)
    assert stats.n_dropped == 1
    _, stats = tokenize_examples(tok, [short], max_length=n_prompt + 1)
    assert stats.n_dropped == 0


def test_bad_rows_are_data_errors_naming_the_row(tiny_char_base) -> None:
    tok = _tok(tiny_char_base)
    with pytest.raises(DataError, match=r"train\[1\]"):
        tokenize_examples(tok, [{"instruction": "a", "output": "b"}, {"instruction": "a"}], max_length=32,
                          source="train")
    with pytest.raises(DataError, match=r"examples\[0\]\.input"):
        tokenize_examples(tok, [{"instruction": "a", "input": 3, "output": "b"}], max_length=32)


def test_pack_rows_is_a_valid_tight_packing() -> None:
    import random

    rng = random.Random(1)
    lengths = [rng.randint(5, 300) for _ in range(500)]
    rows = pack_rows(lengths, 512, seed=0)
    flat = sorted(i for row in rows for i in row)
    assert flat == list(range(500))
    assert all(sum(lengths[i] for i in row) <= 512 for row in rows)
    lower_bound = -(-sum(lengths) // 512)
    assert len(rows) <= lower_bound + 2  # best-fit decreasing is within a row or two of the optimum here
    assert pack_rows(lengths, 512, seed=0) == rows  # deterministic
    with pytest.raises(ValueError):
        pack_rows([600], 512)


def test_packed_forward_equals_unpacked(tiny_char_base) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    tok = _tok(tiny_char_base)
    model = AutoModelForCausalLM.from_pretrained(tiny_char_base).eval()
    rows = [{"instruction": w, "output": w[::-1] * 2} for w in ["ab", "hello there", "x", "packing works"]]
    tokd, _ = tokenize_examples(tok, rows, max_length=128)
    padded = PaddedCollator(tok.pad_token_id)(tokd)
    packed = PackedCollator(tok.pad_token_id)([tokd[:3], tokd[3:]])  # two rows, the first holds three examples
    with torch.no_grad():
        ref = model(**padded)
        got = model(**packed)
        ref_logits = ref.logits
    at = 0
    for b, t in enumerate(tokd[:3]):
        n = len(t)
        assert torch.allclose(ref_logits[b, :n], got.logits[0, at : at + n], atol=1e-5)
        at += n
    assert torch.allclose(ref_logits[3, : len(tokd[3])], got.logits[1, : len(tokd[3])], atol=1e-5)
    # and the loss is the same: same supervised tokens, none across example boundaries
    assert int((packed["labels"] != IGNORE).sum()) == int((padded["labels"] != IGNORE).sum())
    assert torch.allclose(ref.loss, got.loss, atol=1e-5)


def test_tiny_cli_builds_a_model_both_auto_classes_load(tmp_path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from lion.student.tiny import main

    assert main(["--out", str(tmp_path / "m"), "--hidden", "16", "--layers", "1", "--heads", "2"]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    tok = _tok(tmp_path / "m")
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tok)
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    meta = json.loads((tmp_path / "m" / "lion_tiny.json").read_text())
    assert meta["params"] == sum(p.numel() for p in model.parameters())
    out = model(torch.tensor([[tok.bos_token_id, 10, 11]])).logits
    assert out.shape == (1, 3, len(tok))


def test_resolve_base_model_builds_tiny_once_and_checks_options(tmp_path) -> None:
    from lion.student import resolve_base_model

    cfg = StudentConfig(model="tiny", tiny={"hidden": 16, "layers": 1, "heads": 2, "seed": 3})
    path = resolve_base_model(cfg, tmp_path / "base_model")
    assert path == tmp_path / "base_model"
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_base_model(cfg, tmp_path / "base_model") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # idempotent: not rebuilt
    assert resolve_base_model(StudentConfig(model="some/hub-id"), tmp_path) == "some/hub-id"
    with pytest.raises(ConfigError, match="student.tiny.width"):
        resolve_base_model(StudentConfig(model="tiny", tiny={"width": 3}), tmp_path / "x")
    with pytest.raises(ConfigError, match="student.tiny"):
        resolve_base_model(StudentConfig(model="tiny", tiny={"hidden": 30, "heads": 4}), tmp_path / "y")


def test_vicuna_answers_tokenise_without_drops(tiny_char_base, shared_data: Path) -> None:
    """Real text (GPT-3.5 answers to the Vicuna questions) goes through the pipeline: nothing lost but truncation."""
    f = shared_file(shared_data, "vicuna80/answer_gpt35.jsonl")
    questions = shared_file(shared_data, "vicuna80/question.jsonl")
    q = {json.loads(x)["question_id"]: json.loads(x) for x in questions.read_text().splitlines()}
    rows = []
    for line in f.read_text().splitlines()[:20]:
        a = json.loads(line)
        qq = q[a["question_id"]]
        rows.append({"instruction": qq.get("text") or qq["turns"][0], "output": a["text"]})
    tok = _tok(tiny_char_base)
    tokd, stats = tokenize_examples(tok, rows, max_length=4096)
    assert stats.n_dropped == 0 and len(tokd) == 20
    for t, row in zip(tokd, rows, strict=True):
        sup = [i for i, lab in zip(t.input_ids, t.labels, strict=True) if lab != IGNORE]
        text = row["output"].encode("ascii", "replace").decode()
        if text == row["output"]:  # pure-ASCII answers decode back exactly through the char vocabulary
            assert tok.decode(sup[:-1]) == row["output"]
