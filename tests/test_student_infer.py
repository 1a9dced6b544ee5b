"""Student inference, transformers backend: batched == unbatched greedy, EOS stop, prompt stripped, adapters, CLI.

    python -m pytest -q tests/test_student_infer.py
"""

from __future__ import annotations

import dataclasses
import json

from conftest import STUDENT_FACTS

from lion.config import InferConfig
from lion.student.data import format_prompt
from lion.student.infer import generate, pick_backend

PROMPTS = [format_prompt(q) for q, _ in STUDENT_FACTS]


def test_trained_student_answers_exactly_prompt_stripped_and_stops_at_eos(facts_student) -> None:
    out = generate(facts_student, PROMPTS, InferConfig(max_new_tokens=40, batch_size=8), progress=False)
    # each answer is the memorised response alone: no prompt echo, nothing after EOS (40 tokens were allowed)
    assert out == [a for _, a in STUDENT_FACTS]


def test_batched_greedy_equals_one_at_a_time(facts_student, tiny_char_base) -> None:
    prompts = PROMPTS + [format_prompt("An unseen and much longer question about nothing in particular?"),
                         format_prompt("x")]
    for model in (facts_student, tiny_char_base):  # a trained student and an untrained (long, noisy) one
        batched = generate(model, prompts, InferConfig(max_new_tokens=24, batch_size=4), progress=False)
        single = generate(model, prompts, InferConfig(max_new_tokens=24, batch_size=1), progress=False)
        assert batched == single
        assert len(batched) == len(prompts)
        if model == facts_student:
            assert len(set(batched)) > 5  # distinct answers, not one repeated string


def test_max_new_tokens_is_honoured(tiny_char_base) -> None:
    out = generate(tiny_char_base, PROMPTS[:3], InferConfig(max_new_tokens=3), progress=False)
    assert all(len(o) <= 3 for o in out)  # one character per token
    assert generate(tiny_char_base, [], InferConfig()) == []


def test_sampling_is_seeded(tiny_char_base) -> None:
    """Sampling repeats for one seed and differs for another (so it is really sampling, not silently greedy)."""
    cfg = InferConfig(max_new_tokens=12, temperature=1.0, seed=7)
    a = generate(tiny_char_base, PROMPTS[:3], cfg, progress=False)
    b = generate(tiny_char_base, PROMPTS[:3], cfg, progress=False)
    assert a == b
    # the untrained model's next-character distribution is near uniform over ~100 characters: two seeds giving
    # one 12-character answer is practically impossible (and the weights are seeded, so this is deterministic)
    other = generate(tiny_char_base, PROMPTS[:3], dataclasses.replace(cfg, seed=8), progress=False)
    assert all(x != y for x, y in zip(a, other, strict=True)), (a, other)


def test_adapter_is_attached_without_merging_and_matches_the_merged_model(tmp_path, tiny_char_base) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_char_base),
                                LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a non-trivial adapter
    peft_model.save_pretrained(tmp_path / "adapter")  # plain PEFT dir: names its base in adapter_config.json
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    AutoTokenizer.from_pretrained(tiny_char_base).save_pretrained(tmp_path / "merged")
    cfg = InferConfig(max_new_tokens=16, batch_size=4)
    via_adapter = generate(tiny_char_base, PROMPTS, cfg, adapter=tmp_path / "adapter", progress=False)
    via_dir = generate(tmp_path / "adapter", PROMPTS, cfg, progress=False)  # adapter dir alone: base found
    assert via_adapter == via_dir == generate(tmp_path / "merged", PROMPTS, cfg, progress=False)
    assert via_adapter != generate(tiny_char_base, PROMPTS, cfg, progress=False)


def test_auto_backend_is_transformers_without_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        assert pick_backend(InferConfig()) == "transformers"
    assert pick_backend(InferConfig(backend="transformers")) == "transformers"


def test_cli_answers_a_jsonl_file(tmp_path, facts_student, capsys) -> None:
    from lion.records import read_jsonl, write_jsonl
    from lion.student.infer import main

    write_jsonl(tmp_path / "q.jsonl", [{"id": f"q{i}", "instruction": q} for i, (q, _) in enumerate(STUDENT_FACTS)])
    assert main(["--model", str(facts_student), "--data", str(tmp_path / "q.jsonl"), "--out", str(tmp_path / "a.jsonl")]) == 0
    rows = read_jsonl(tmp_path / "a.jsonl")
    assert [r["id"] for r in rows] == [f"q{i}" for i in range(8)]
    assert [r["answer"] for r in rows] == [a for _, a in STUDENT_FACTS]
    assert json.loads(capsys.readouterr().out.strip())["answers"] == 8


def test_stop_ids_include_the_models_end_of_turn_tokens(tiny_char_base) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lion.student.infer import stop_ids

    tok = AutoTokenizer.from_pretrained(tiny_char_base)
    model = AutoModelForCausalLM.from_pretrained(tiny_char_base)
    assert stop_ids(model, tok) == [tok.eos_token_id]
    model.generation_config.eos_token_id = [tok.eos_token_id, 7]  # e.g. a chat model's end-of-turn token
    assert stop_ids(model, tok) == [tok.eos_token_id, 7]
    from lion.student.data import encode_prompt
    from lion.student.infer import generate_hf

    model.generation_config.eos_token_id = tok.eos_token_id
    ids = [encode_prompt(tok, p) for p in PROMPTS[:2]]
    before = generate_hf(model, tok, ids, InferConfig(max_new_tokens=6), progress=False)
    assert all(len(b) == 6 for b in before)  # the untrained model never says EOS
    first = tok(before[0][0], add_special_tokens=False)["input_ids"][0]
    model.generation_config.eos_token_id = [tok.eos_token_id, first]
    after = generate_hf(model, tok, ids, InferConfig(max_new_tokens=6), progress=False)
    assert after[0] == "" and all(before[0][0] not in a for a in after)
