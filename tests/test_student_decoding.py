"""The student decodes with what student.infer states and nothing hidden, and says when an answer was cut.

    python -m pytest -q tests/test_student_decoding.py

- A checkpoint whose generation_config.json sets repetition_penalty / top_k / no_repeat_ngram_size: lion's greedy
  answer (transformers backend) equals a hand-written argmax loop's; with `generation_config: inherit` the
  checkpoint's settings apply (and the answer is transformers' own generate() under them).
- `student.infer.dtype: auto` resolves once to the dtype both backends get (float32 on CPU).
- An answer with no stop token within max_new_tokens is marked `truncated` in the answers file (transformers here;
  vLLM and the server in tests/test_vllm_real.py and tests/test_student_serve.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import STUDENT_FACTS

from lion.config import InferConfig, config_from_dict
from lion.records import Instruction, read_jsonl
from lion.student.data import encode_prompt, format_prompt

CHECKPOINT_SAMPLING = {"repetition_penalty": 1.5, "top_k": 3, "no_repeat_ngram_size": 2, "do_sample": True,
                       "temperature": 0.7}


@pytest.fixture
def opinionated(tmp_path: Path, tiny_char_base: Path) -> Path:
    """The tiny base with a generation_config.json that sets sampling (as Qwen2.5-Instruct's sets
    repetition_penalty 1.05, top_k 20, temperature 0.7)."""
    out = tmp_path / "opinionated"
    shutil.copytree(tiny_char_base, out)
    gc_path = out / "generation_config.json"
    gc = json.loads(gc_path.read_text()) if gc_path.exists() else {}
    gc_path.write_text(json.dumps({**gc, **CHECKPOINT_SAMPLING}))
    return out


def argmax_answers(model_dir: Path, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy decoding written out by hand: the full forward pass each step, the argmax token, stop at EOS."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for p in prompts:
        ids = encode_prompt(tok, p)
        new: list[int] = []
        with torch.inference_mode():
            for _ in range(max_new_tokens):
                t = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
                if t == tok.eos_token_id:
                    break
                new.append(t)
        out.append(tok.decode(new, skip_special_tokens=True))
    return out


PROMPTS = [format_prompt(q) for q in ("Hi", "Tell me a long story about cats.", "abcabcabc", "x")]


def test_greedy_answers_ignore_the_checkpoints_sampling_settings(opinionated: Path) -> None:
    from lion.student.infer import generate

    cfg = InferConfig(backend="transformers", max_new_tokens=24, batch_size=2)
    reference = argmax_answers(opinionated, PROMPTS, 24)
    assert generate(opinionated, PROMPTS, cfg, progress=False) == reference


def test_inherit_applies_the_checkpoints_settings_under_student_infers_keys(opinionated: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lion.student.infer import generate

    cfg = InferConfig(backend="transformers", max_new_tokens=24, batch_size=1, generation_config="inherit")
    inherited = generate(opinionated, PROMPTS, cfg, progress=False)
    assert inherited != argmax_answers(opinionated, PROMPTS, 24)  # the penalties changed some answer
    # what transformers does with the checkpoint's settings, greedy (student.infer's temperature 0 wins over the
    # checkpoint's do_sample / temperature)
    tok = AutoTokenizer.from_pretrained(opinionated)
    model = AutoModelForCausalLM.from_pretrained(opinionated, dtype=torch.float32).eval()
    for prompt, answer in zip(PROMPTS, inherited, strict=True):
        ids = torch.tensor([encode_prompt(tok, prompt)])
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        new = gen[0, ids.shape[1]:].tolist()
        new = new[: new.index(tok.eos_token_id)] if tok.eos_token_id in new else new
        assert answer == tok.decode(new, skip_special_tokens=True)


def test_dtype_auto_resolves_once_for_both_backends(tiny_char_base: Path) -> None:
    import torch

    from lion.student.infer import StudentSession, inference_settings, resolve_dtype
    from lion.student.vllm_backend import engine_kwargs

    assert not torch.cuda.is_available()
    cfg = InferConfig(backend="transformers")
    assert resolve_dtype(cfg) == "float32" and resolve_dtype(InferConfig(dtype="bfloat16")) == "bfloat16"
    assert engine_kwargs(str(tiny_char_base), cfg, tokenizer=None, adapter=None)["dtype"] == "float32"
    session = StudentSession(tiny_char_base, cfg, progress=False)
    assert session.settings == inference_settings(cfg) == {
        "backend": "transformers", "dtype": "float32", "generation_config": "ignore", "temperature": 0.0,
        "top_p": None, "max_new_tokens": 512, "seed": 0}
    session.generate([PROMPTS[0]])
    assert next(session._model.parameters()).dtype == torch.float32
    session.close()


def test_an_answer_cut_at_max_new_tokens_is_marked_in_the_answers_file(tmp_path: Path, facts_student: Path) -> None:
    """The facts student answers "ok" in 2 characters + EOS and "Hello there, friend!" in 20: with max_new_tokens
    4, the answers longer than 3 characters are cut (no EOS within the budget), the others are not."""
    from lion.answers import StudentAnswerer, read_truncated

    cfg = config_from_dict({"student": {"model": str(facts_student), "prompt_format": "alpaca",
                                        "infer": {"backend": "transformers", "max_new_tokens": 4, "batch_size": 3}},
                            "pools": {"train_seed": "unused"}})
    items = [Instruction(q) for q, _ in STUDENT_FACTS]
    path = tmp_path / "student_answers.jsonl"
    with StudentAnswerer(SimpleNamespace(cfg=cfg, progress=False), facts_student, path, phase="test") as sa:
        answers = sa.answer(items)
        cut_now = sa.truncated_ids
    expected = {it.id for it, (_, a) in zip(items, STUDENT_FACTS, strict=True) if len(a) > 3}
    assert 0 < len(expected) < len(items)
    assert cut_now == expected == read_truncated(path)
    assert {it.id: answers[it.id] for it in items} == {it.id: a[:4] for it, (_, a) in zip(items, STUDENT_FACTS,
                                                                                           strict=True)}
    rows = read_jsonl(path)
    assert all(isinstance(r["truncated"], bool) for r in rows)
    # a resumed answerer reads the flags back from the file
    with StudentAnswerer(SimpleNamespace(cfg=cfg, progress=False), facts_student, path, phase="test") as sa:
        assert sa.answer(items) == answers and sa.truncated_ids == expected and sa.generated == 0
