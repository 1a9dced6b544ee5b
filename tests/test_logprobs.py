"""The teacher's top-k logprobs (issue 22, items 1, 3 and 5): asked for, stored compactly, replayed from the cache,
refused where a provider has none; the snapshot that really answered, recorded and watched.

    python -m pytest -q tests/test_logprobs.py

The offline teacher is lion's own server with the `hf` responder on a tiny LLaMA given a chat template (fast); the
real SmolLM2 path is in tests/test_real_model.py, a real vLLM server in tests/test_vllm_server.py.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from lion.errors import ConfigError, ProviderError
from lion.teachers.base import ChatRequest
from lion.teachers.logprobs import TokenLogprobs

CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")
QUESTIONS = ["What colour is the sky?", "Name a fruit.", "Two plus two?", "Say hello."]


@pytest.fixture(scope="session")
def tiny_chat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BPE LLaMA (random weights) whose tokenizer has a chat template: the hf responder serves it."""
    from transformers import AutoTokenizer

    from lion.student.tiny import build_tiny

    path = build_tiny(tmp_path_factory.mktemp("lp") / "tiny_chat", vocab="bpe", hidden=32, layers=2, heads=2)
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(path)
    return path


def _requests() -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": q}]) for q in QUESTIONS]


# --------------------------------------------------------------------------------------------- the record


def test_codec_keeps_tokens_logprobs_and_alternatives_compactly() -> None:
    content = [{"token": "Hel", "logprob": -0.25, "bytes": [72, 101, 108],
                "top_logprobs": [{"token": "Hel", "logprob": -0.25}, {"token": "Hi", "logprob": -1.75},
                                 {"token": "Hel", "logprob": -0.25}, {"token": "Yo", "logprob": -3.0}]},
               {"token": "lo", "logprob": -9999.0, "top_logprobs": [{"token": " there", "logprob": -0.5},
                                                                     {"token": "\ufffd", "logprob": -2.0}]},
               {"token": "<|im_end|>", "logprob": -0.125, "top_logprobs": []}]
    lp = TokenLogprobs.from_openai(content)
    assert lp.tokens == [b"Hel", b"lo", b"<|im_end|>"] and lp.k == 3
    assert [t for t, _ in lp.top[0]] == [b"Hel", b"Hi", b"Yo"]  # duplicates dropped, highest first
    back = TokenLogprobs.decode(lp.encode())
    assert back.tokens == lp.tokens and back.top[2] == [] and len(back.top[1]) == 2
    assert back.logprobs == pytest.approx(lp.logprobs, rel=1e-3)  # float16: vLLM's -9999 floor reads -10000
    assert [v for _, v in back.top[0]] == pytest.approx([-0.25, -1.75, -3.0], rel=1e-3)
    assert back.truncate(1).top[0] == [(b"Hel", -0.25)] and back.truncate(1).k == 1
    assert back.to_openai()[0]["bytes"] == [72, 101, 108]
    assert TokenLogprobs.token_id(b"token_id:123") == 123 and TokenLogprobs.token_id(b"123") is None
    with pytest.raises(ValueError, match="not a logprobs record"):
        TokenLogprobs.decode(b"garbage")
    # size: 200 tokens with 20 alternatives each, from a vocabulary of 300 strings
    import random

    rng = random.Random(0)
    vocab = [f"t{i}".encode() for i in range(300)]
    big = TokenLogprobs([rng.choice(vocab) for _ in range(200)], [-rng.random() for _ in range(200)],
                        [sorted(((v, -5 * rng.random()) for v in rng.sample(vocab, 20)), key=lambda x: -x[1])
                         for _ in range(200)])
    per_token = len(big.encode()) / len(big)
    assert per_token < 21 * 4  # at most (index + float16) per entry, before zlib; the bench reports the real figure


# --------------------------------------------------------------------------------------------- the offline teacher


def test_hf_responder_logprobs_are_the_models_own_distribution(tiny_chat: Path) -> None:
    """Every generated token's logprob and top alternatives equal a plain forward pass over prompt + answer."""
    import torch
    from transformers import AutoModelForCausalLM

    from lion.sim.hf_responder import HFResponder

    r = HFResponder(str(tiny_chat), batch_size=4)
    convs = [[{"role": "user", "content": q}] for q in QUESTIONS]
    outs = r.generate(convs, 6, 0.0, logprobs=True)
    plain = r.generate(convs, 6, 0.0)
    assert [o.text for o in outs] == [o.text for o in plain] and plain[0].logprobs is None
    model = AutoModelForCausalLM.from_pretrained(tiny_chat, dtype=torch.float32).eval()
    tok = r._tok
    for conv, out in zip(convs, outs, strict=True):
        assert out.logprobs is not None and len(out.logprobs) == out.completion_tokens
        prompt = r.encode(conv)
        ids = [tok.convert_tokens_to_ids(tok.tokenize(e["token"])) for e in out.logprobs]
        gen = [i for x in ids for i in x]  # the decoded tokens map back to the generated ids (one each here)
        assert len(gen) == len(out.logprobs)
        with torch.inference_mode():
            logp = torch.log_softmax(model(torch.tensor([prompt + gen])).logits[0].float(), -1)
        for step, e in enumerate(out.logprobs):
            row = logp[len(prompt) - 1 + step]
            assert e["logprob"] == pytest.approx(float(row[gen[step]]), abs=1e-4)
            top = row.topk(20)
            assert [a["logprob"] for a in e["top_logprobs"]] == pytest.approx(top.values.tolist(), abs=1e-4)
            assert e["top_logprobs"][0]["token"] == e["token"]  # greedy: the generated token is the top one
            assert e["bytes"] == list(e["token"].encode("utf-8"))


def test_gateway_asks_stores_and_replays_logprobs(tiny_chat: Path, sim_server, sim_llm, tmp_path: Path) -> None:
    from lion.answers import AnswerStore
    from lion.sim.hf_responder import HFResponder
    from lion.teachers.gateway import Gateway

    server = sim_server(HFResponder(str(tiny_chat), batch_size=4), system_fingerprint="fp_sim1",
                        served_models={"tiny-teacher": "tiny-teacher-2026-12-01"})
    llm = sim_llm(server.base_url, model="tiny-teacher", max_tokens=6, temperature=0.0, timeout_s=60)
    llm.teacher.top_logprobs = 5
    run = tmp_path / "run"
    with Gateway(llm, run, progress=False) as gw:
        first = gw.chat_many("teacher", "imitation", _requests())
    assert all(r.ok and r.logprobs for r in first)
    sent = [e for e in server.log if e["kind"] == "ok"]
    assert len(sent) == len(QUESTIONS)
    for res in first:
        lp = TokenLogprobs.decode(res.logprobs)
        assert lp.k == 5 and len(lp) == res.completion_tokens
        assert res.served_model == "tiny-teacher-2026-12-01" and res.fingerprint == "fp_sim1"
        assert all(sum(math.exp(v) for _, v in alts) <= 1.0 + 1e-3 for alts in lp.top)
    # a fresh gateway on the same run replays everything, logprobs included, without a request
    with Gateway(llm, run, progress=False) as gw:
        again = gw.chat_many("teacher", "imitation", _requests())
    assert [r.cached for r in again] == [True] * len(QUESTIONS)
    assert [r.logprobs for r in again] == [r.logprobs for r in first]
    assert [r.served_model for r in again] == [r.served_model for r in first]
    assert len([e for e in server.log if e["kind"] == "ok"]) == len(QUESTIONS)
    # top_logprobs is part of the key: the same prompts without logprobs are other calls
    llm.teacher.top_logprobs = 0
    with Gateway(llm, run, progress=False) as gw:
        without = gw.chat_many("teacher", "imitation", _requests())
    assert not any(r.cached for r in without) and all(r.logprobs is None for r in without)
    assert [r.text for r in without] == [r.text for r in first]
    # the answer store keeps them in its side file; the JSONL row stays readable
    store = AnswerStore(tmp_path / "teacher_answers.jsonl", None)
    store.put("a", "t", first[0].text, "stop", model=first[0].served_model, logprobs=first[0].logprobs)
    store.put("b", "t", first[1].text, "stop")
    store.close()
    store = AnswerStore(tmp_path / "teacher_answers.jsonl", None)
    row = store.get("a", "t")
    assert row["model"] == "tiny-teacher-2026-12-01" and row["logprobs"]["k"] == 5
    assert store.logprobs(row) == first[0].logprobs and store.logprobs(store.get("b", "t")) is None
    assert (tmp_path / "teacher_answers.logprobs.bin").stat().st_size > 0
    store.close()
    # a cut side file is named, never read as logprobs
    (tmp_path / "teacher_answers.logprobs.bin").write_bytes(b"")
    store = AnswerStore(tmp_path / "teacher_answers.jsonl", None)
    from lion.errors import DataError

    with pytest.raises(DataError, match="do not read back"):
        store.logprobs(store.get("a", "t"))
    store.close()


def test_batch_mode_asks_for_logprobs_in_the_batch_body(tiny_chat: Path, sim_server, sim_llm,
                                                        tmp_path: Path) -> None:
    from lion.sim.hf_responder import HFResponder
    from lion.teachers.gateway import Gateway

    server = sim_server(HFResponder(str(tiny_chat), batch_size=4))
    llm = sim_llm(server.base_url, model="tiny-teacher", max_tokens=5, temperature=0.0, timeout_s=60,
                  mode="batch", batch_poll_s=0.05)
    llm.teacher.top_logprobs = 3
    with Gateway(llm, tmp_path / "run", progress=False) as gw:
        results = gw.chat_many("teacher", "imitation", _requests())
    assert all(r.ok for r in results) and server.batches.created
    assert all(TokenLogprobs.decode(r.logprobs).k == 3 for r in results)


# --------------------------------------------------------------------------------------------- refusals


def test_providers_without_logprobs_are_refused_at_config_check() -> None:
    from lion.config import config_from_dict

    def cfg(**teacher: Any) -> Any:
        return config_from_dict({"llm": {"teacher": teacher}, "student": {"model": "tiny"},
                                 "pools": {"train_seed": "x"}})

    assert cfg(top_logprobs=20, model="gpt-4.1-mini").llm.teacher.top_logprobs == 20
    with pytest.raises(ConfigError, match=r"llm.teacher.top_logprobs: Anthropic's messages API returns no logprobs"):
        cfg(top_logprobs=5, provider="anthropic", model="claude-sonnet-4-5")
    with pytest.raises(ConfigError, match=r"llm.teacher.top_logprobs: gpt-5-mini is a reasoning model .*You are not "
                                          r"allowed to request logprobs"):
        cfg(top_logprobs=5, model="gpt-5-mini")
    with pytest.raises(ConfigError, match=r"llm.teacher.top_logprobs: must be between 0 and 20"):
        cfg(top_logprobs=21)
    with pytest.raises(ConfigError, match=r"llm.default.top_logprobs: only the teacher's logprobs are used"):
        config_from_dict({"llm": {"default": {"top_logprobs": 5}}, "student": {"model": "tiny"},
                          "pools": {"train_seed": "x"}})


def test_a_refusing_model_stops_the_run_at_the_first_call(sim_server, sim_llm, tmp_path: Path) -> None:
    """A name config check cannot recognise (an Azure deployment of o4-mini, say) meets OpenAI's 403 at the first
    call: the run stops with one line naming llm.teacher.top_logprobs; nothing was paid."""
    from lion.teachers.gateway import Gateway

    server = sim_server(strict=True)
    llm = sim_llm(server.base_url, model="sim", max_tokens=8, token_param="max_completion_tokens")
    llm.teacher.model, llm.teacher.top_logprobs = "o4-mini", 5  # as if the name hid the model (no config check)
    with Gateway(llm, tmp_path / "run", progress=False) as gw, \
            pytest.raises(ProviderError, match=r"llm.teacher: .*You are not allowed to request logprobs from this "
                                               r"model — set llm.teacher.top_logprobs: 0 \(now 5"):
        gw.chat_many("teacher", "imitation", _requests())
    assert server.stats.completed == 0 and server.stats.by_status.get(403)


def test_a_server_that_ignores_logprobs_stops_at_the_first_call(sim_server, sim_llm, tmp_path: Path) -> None:
    """A server that answers without the logprobs asked for (the echo responder has none: `logprobs: null`): the
    call is paid and in the ledger, not cached (its answer lacks what was bought), and the run stops naming the key."""
    from lion.teachers.gateway import Gateway

    server = sim_server()
    llm = sim_llm(server.base_url, max_in_flight=1)
    llm.teacher.top_logprobs = 4
    with Gateway(llm, tmp_path / "run", progress=False) as gw:
        with pytest.raises(ProviderError, match=r"answered without the logprobs asked for "
                                                r"\(llm.teacher.top_logprobs: 4\)"):
            gw.chat_many("teacher", "imitation", _requests())
        total = gw.usage_summary()["total"]
    assert server.stats.completed == 1  # one worker: the first reply stops the rest
    assert total["calls"] == 1 and total["tokens_out"] > 0
    db = sqlite3.connect(tmp_path / "run" / "calls.sqlite")
    assert db.execute("select count(*) from calls").fetchone()[0] == 0


# --------------------------------------------------------------------------------------------- snapshots


def test_a_snapshot_change_mid_run_is_one_line_then_warn_or_stop(sim_server, sim_llm, tmp_path: Path,
                                                                 capsys) -> None:
    from lion.snapshots import per_role, read_snapshots
    from lion.teachers.gateway import Gateway

    server = sim_server(served_models={"gpt-x": "gpt-x-2026-01-01"}, system_fingerprint="fp_a")
    llm = sim_llm(server.base_url, model="gpt-x", max_in_flight=1)
    run = tmp_path / "run"
    with Gateway(llm, run, progress=False) as gw:
        first = gw.chat_many("teacher", "imitation", [[{"role": "user", "content": f"q{i}"}] for i in range(3)])
        assert {r.served_model for r in first} == {"gpt-x-2026-01-01"}
        assert "another snapshot" not in capsys.readouterr().err
        server.served_models["gpt-x"] = "gpt-x-2026-06-01"  # the provider moves the alias
        server.system_fingerprint = "fp_b"
        second = gw.chat_many("teacher", "imitation", [[{"role": "user", "content": f"r{i}"}] for i in range(2)])
    assert {r.served_model for r in second} == {"gpt-x-2026-06-01"} and all(r.ok for r in second)
    err = capsys.readouterr().err
    assert ("llm.teacher: gpt-x was served by another snapshot during the run: gpt-x-2026-01-01 (3 calls), "
            "gpt-x-2026-06-01 (1 calls)") in err
    # once, at the change (counted in the gateway's own log: stderr may also carry it through a lion.* log handler
    # that an earlier test of the session installed)
    assert (run / "gateway.log").read_text().count("another snapshot") == 1
    summary = per_role(read_snapshots(run / "calls.sqlite"))["teacher"]["gpt-x"]
    assert summary["snapshots"] == {"gpt-x-2026-01-01": 3, "gpt-x-2026-06-01": 2}
    assert summary["fingerprints"] == {"fp_a": 3, "fp_b": 2}
    # on_model_change: stop, in another run: the first reply of a new snapshot stops the run (it is cached)
    run2 = tmp_path / "run2"
    llm.teacher.on_model_change = "stop"
    with Gateway(llm, run2, progress=False) as gw:
        gw.chat_many("teacher", "imitation", [[{"role": "user", "content": f"q{i}"}] for i in range(3)])
        server.served_models["gpt-x"] = "gpt-x-2026-09-01"
        with pytest.raises(ProviderError, match=r"gpt-x-2026-06-01 \(3 calls\), gpt-x-2026-09-01 \(1 calls\) — the run "
                                                r"stops here"):
            gw.chat_many("teacher", "imitation", [[{"role": "user", "content": f"s{i}"}] for i in range(3)])
    db = sqlite3.connect(run2 / "calls.sqlite")
    assert db.execute("select count(*) from calls where served_model='gpt-x-2026-09-01'").fetchone()[0] == 1
    # run again unchanged: it stops before paying for anything; what was answered still replays
    before = server.stats.requests
    with Gateway(llm, run2, progress=False) as gw:
        with pytest.raises(ProviderError, match=r"was served by another snapshot"):
            gw.chat_many("teacher", "imitation", [[{"role": "user", "content": "t0"}]])
        assert all(r.cached for r in gw.chat_many("teacher", "imitation",
                                                  [[{"role": "user", "content": f"q{i}"}] for i in range(3)]))
    assert server.stats.requests == before
