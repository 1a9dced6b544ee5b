"""Training on the teacher's top-k logprobs (issue 22, item 2): the loss, the token alignment, the collators, the
training (LoRA and full, packed, one process and torchrun) and the imitation phase end to end.

    python -m pytest -q tests/test_topk_kd.py          # -m "not slow" leaves out the torchrun case

Teachers here are real tiny LLaMA models: their top-k comes from a forward pass over the answer (what an API with
the same tokenizer returns) or from lion's own server with the `hf` responder (what vLLM returns).
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

import pytest
from conftest import STUDENT_FACTS

from lion.errors import DataError
from lion.student.kd import TokenAligner, topk_kd_loss
from lion.teachers.logprobs import TokenLogprobs

IGNORE = -100


# --------------------------------------------------------------------------------------------- the loss


def test_kd_loss_against_a_hand_computed_case() -> None:
    """Vocabulary of 4. Position 0 predicts token 1 from logits (2, 1, 0, -1): logZ = ln(e^2 + e + 1 + e^-1) =
    2.440189, so log q = (-0.440189, -1.440189, -2.440189, -3.440189). The teacher's top-2 there: token 1 with
    p = 0.5 and token 0 with p = 0.3, so p_tail = 0.2 and the student's tail (tokens 2, 3) is
    log q_tail = ln(1 + e^-1) - logZ = -2.126927.
      KL = 0.5 (ln 0.5 + 1.440189) + 0.3 (ln 0.3 + 0.440189) + 0.2 (ln 0.2 + 2.126927)
         = 0.373521 - 0.229135 + 0.103498 = 0.247884
      CE = 1.440189 (the teacher's token, 1);  weight 0.5: 0.5 * 0.247884 + 0.5 * 1.440189 = 0.844037
    Position 1 predicts token 3 from uniform logits with no teacher target: CE = ln 4 = 1.386294.
    Position 2 (label -100) counts nothing. Sum 2.230331 over 2 supervised tokens."""
    import torch

    logits = torch.tensor([[[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0], [5.0, 5.0, 5.0, 5.0]]], requires_grad=True)
    labels = torch.tensor([[IGNORE, 1, 3]])
    ids = torch.tensor([[[-1, -1], [1, 0], [-1, -1]]])
    logp = torch.tensor([[[0.0, 0.0], [math.log(0.5), math.log(0.3)], [0.0, 0.0]]])
    total, n = topk_kd_loss(logits, labels, ids, logp, 0.5)
    assert int(n) == 2
    assert float(total.detach()) == pytest.approx(0.844037 + 1.386294, abs=1e-5)
    # the gradient at position 0: 0.5 * (q - p on the top-k, q_i (1 - p_tail / q_tail) on the tail) + 0.5 (q - onehot)
    total.backward()
    q = [0.643914, 0.236883, 0.087144, 0.032059]
    q_tail = q[2] + q[3]
    kl_grad = [q[0] - 0.3, q[1] - 0.5, q[2] * (1 - 0.2 / q_tail), q[3] * (1 - 0.2 / q_tail)]
    ce_grad = [q[0], q[1] - 1, q[2], q[3]]
    expected = [0.5 * a + 0.5 * b for a, b in zip(kl_grad, ce_grad, strict=True)]
    assert logits.grad[0, 0].tolist() == pytest.approx(expected, abs=1e-5)
    assert logits.grad[0, 2].abs().sum() == 0
    # weight 1: the KL alone at position 0; weight 0: plain cross-entropy everywhere
    total1, _ = topk_kd_loss(logits.detach(), labels, ids, logp, 1.0)
    assert float(total1) == pytest.approx(0.247884 + 1.386294, abs=1e-5)
    total0, _ = topk_kd_loss(logits.detach(), labels, ids, logp, 0.0)
    assert float(total0) == pytest.approx(1.440189 + 1.386294, abs=1e-5)
    # a padding entry before the targets must not mask token 0 out of the tail: targets 1 (p 0.5) and 2 (p 0.3),
    # tail = tokens 0 and 3: log q_tail = ln(0.643914 + 0.032059) = -0.391681;
    # KL = 0.5 (ln 0.5 + 1.440189) + 0.3 (ln 0.3 + 2.440189) + 0.2 (ln 0.2 + 0.391681) = 0.500835
    ids_p = torch.tensor([[[-1, -1, -1], [-1, 1, 2], [-1, -1, -1]]])
    logp_p = torch.tensor([[[0.0, 0.0, 0.0], [0.0, math.log(0.5), math.log(0.3)], [0.0, 0.0, 0.0]]])
    total_p, _ = topk_kd_loss(logits.detach(), labels, ids_p, logp_p, 0.5)
    assert float(total_p) == pytest.approx(0.5 * 0.500835 + 0.5 * 1.440189 + 1.386294, abs=1e-5)


def test_kd_loss_is_zero_kl_when_the_student_is_the_teacher() -> None:
    import torch

    torch.manual_seed(0)
    logits = torch.randn(1, 5, 50)
    logq = torch.log_softmax(logits, -1)
    top = logq.topk(20, -1)
    labels = torch.tensor([[IGNORE, 3, 4, 5, 6]])
    # the target for token t is the distribution the logits at t - 1 predict it from
    ids = torch.cat([torch.full((1, 1, 20), -1), top.indices[:, :-1]], 1)
    lp = torch.cat([torch.zeros(1, 1, 20), top.values[:, :-1]], 1)
    total, n = topk_kd_loss(logits, labels, ids, lp, 1.0)
    assert float(total) == pytest.approx(0.0, abs=1e-5) and int(n) == 4


# --------------------------------------------------------------------------------------------- the teacher's tokens


@pytest.fixture(scope="session")
def tiny_bpe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lion.student.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("kd") / "tiny_bpe", vocab="bpe", hidden=32, layers=2, heads=2)


def teacher_logprobs(model_dir: Path, prompt: str, answer: str, k: int = 5, style: str = "openai") -> str:
    """The top-k a server with this model's tokenizer returns for `answer` after `prompt`, base64 of the record:
    `openai`: exact token bytes, no stop token; `vllm`: tokens named by decode([id]), the EOS reported last;
    `ids`: vLLM with return_tokens_as_token_ids (`token_id:N`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lion.student.kd import Vocab

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    a = tok(answer, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if style != "openai" else [])
    with torch.inference_mode():
        logp = torch.log_softmax(model(torch.tensor([[tok.bos_token_id] + p + a])).logits[0], -1)
    vocab = Vocab(tok)

    def name(i: int) -> bytes:
        if style == "ids":
            return f"token_id:{i}".encode()
        return vocab.exact[i] if style == "openai" and vocab.exact[i] is not None else vocab.text[i].encode()

    content = []
    for j, tid in enumerate(a):
        row = logp[len(p) + j]
        top = row.topk(k)
        content.append({"token": name(tid).decode("utf-8", "replace"), "bytes": list(name(tid)),
                        "logprob": float(row[tid]),
                        "top_logprobs": [{"token": name(int(i)).decode("utf-8", "replace"), "bytes": list(name(int(i))),
                                          "logprob": float(v)} for v, i in zip(top.values, top.indices, strict=True)]})
    return base64.b64encode(TokenLogprobs.from_openai(content).encode()).decode()


SENTENCES = [("Color of the sky?", "The sky is blue on a clear day."), ("Capital of France?", "The capital of France is "
             "Paris."), ("Greet me.", "Hello there, my friend!"), ("Name a fruit.", "An apple is a fruit."),
             ("Opposite of hot?", "The opposite of hot is cold."), ("Two plus two?", "Two plus two is four."),
             ("Spell cat.", "It is spelled c, a, t."), ("Say nothing long.", "Nothing long: ok.")]


def kd_examples(teacher: Path, style: str = "openai", repeat: int = 4,
                facts: list[tuple[str, str]] = STUDENT_FACTS) -> list[dict[str, Any]]:
    from lion.student.data import format_prompt

    rows = []
    for q, a in facts:
        rows.append({"instruction": q, "input": "", "output": a,
                     "teacher_logprobs": teacher_logprobs(teacher, format_prompt(q, fmt="plain"), a, style=style)})
    return rows * repeat


@pytest.mark.parametrize("style", ["openai", "vllm", "ids"])
def test_same_tokenizer_aligns_every_answer(tiny_bpe: Path, style: str) -> None:
    from transformers import AutoTokenizer

    from lion.student.data import tokenize_examples

    tok = AutoTokenizer.from_pretrained(tiny_bpe)
    aligner = TokenAligner(tok)
    rows = kd_examples(tiny_bpe, style, repeat=1)
    tokenized, _ = tokenize_examples(tok, rows, max_length=64, fmt="plain", aligner=aligner)
    assert aligner.stats.with_targets == len(rows) and aligner.stats.mismatched == 0
    for t, row in zip(tokenized, rows, strict=True):
        n_answer = len(tok(row["output"], add_special_tokens=False)["input_ids"])
        assert t.kd is not None and t.kd.start == len(t.input_ids) - n_answer - 1
        targets = (t.kd.ids >= 0).any(-1)
        # every answer token has a target; the EOS only when the server reported the stop token (vLLM does)
        assert targets[:n_answer].all() and bool(targets[n_answer]) == (style != "openai")
        # the teacher's token is among its own top-5 with the same id the student uses (greedy-free: any answer)
        answer_ids = t.input_ids[t.kd.start:t.kd.start + n_answer]
        lp = TokenLogprobs.decode(base64.b64decode(row["teacher_logprobs"]))
        assert len(lp) == n_answer + (style != "openai")
        assert all(tok.decode([i]) == tb.decode() or tb == f"token_id:{i}".encode()
                   for i, tb in zip(answer_ids, lp.tokens, strict=False))
    # exact bytes name every alternative; vLLM's decoded text cannot name a token that is part of a character
    # (all 128 of them read U+FFFD): those go to the tail, counted
    lossy = sum(1 for row in rows for alts in TokenLogprobs.decode(base64.b64decode(row["teacher_logprobs"])).top
                for tb, _ in alts if "\ufffd" in tb.decode("utf-8", "replace"))
    assert aligner.stats.unmapped == (lossy if style == "vllm" else 0)


def test_truncated_answers_align_their_prefix_and_others_fall_back_to_sft(tiny_bpe: Path) -> None:
    from transformers import AutoTokenizer

    from lion.student.data import tokenize_examples

    tok = AutoTokenizer.from_pretrained(tiny_bpe)
    rows = kd_examples(tiny_bpe, repeat=1)
    rows[0] = {**rows[0], "output": "something else entirely"}  # text no longer what the teacher's tokens say
    rows[1] = {k: v for k, v in rows[1].items() if k != "teacher_logprobs"}  # bought before top_logprobs was on
    aligner = TokenAligner(tok, top_k=2)
    from lion.student.data import encode_prompt, format_prompt

    longest_prompt = max(len(encode_prompt(tok, format_prompt(r["instruction"], fmt="plain"))) for r in rows)
    tokenized, stats = tokenize_examples(tok, rows, max_length=longest_prompt + 2, fmt="plain", aligner=aligner)
    assert stats.n_dropped == 0
    st = aligner.stats
    assert st.mismatched == 1 and st.without_logprobs == 1 and st.with_targets == len(rows) - 2
    assert tokenized[0].kd is None and tokenized[1].kd is None
    assert stats.n_truncated > 0  # some answers were cut at max_length: their prefix still has targets
    assert all(t.kd.k == 2 for t in tokenized[2:])


def test_a_mismatched_tokenizer_is_refused_not_misaligned(tiny_bpe: Path, tiny_char_base: Path,
                                                          tmp_path: Path) -> None:
    """The teacher tokenises sentences with a BPE vocabulary, the student with characters: no answer aligns, and
    training stops with one line naming student.objective before a single step."""
    from lion.config import StudentConfig
    from lion.student.train import train_student

    cfg = StudentConfig(model=str(tiny_char_base), objective="topk_kd", max_steps=2, per_device_batch_size=4,
                        grad_accum=1, max_length=64, prompt_format="plain")
    with pytest.raises(DataError, match=r"student.objective: topk_kd: the student's tokenizer reproduces the "
                                        r"teacher's tokens for only 0 of 8 answers .* set student.objective: sft"):
        train_student(cfg, kd_examples(tiny_bpe, repeat=1, facts=SENTENCES), tiny_char_base, tmp_path / "s",
                      progress=False)
    assert not (tmp_path / "s").exists()
    plain = [{k: v for k, v in r.items() if k != "teacher_logprobs"} for r in kd_examples(tiny_bpe, repeat=1)]
    with pytest.raises(DataError, match="none of the 8 training answers has teacher logprobs"):
        train_student(cfg, plain, tiny_char_base, tmp_path / "s", progress=False)


def test_config_check_refuses_what_cannot_work() -> None:
    from lion.config import config_from_dict
    from lion.errors import ConfigError

    base = {"student": {"model": "tiny", "objective": "topk_kd"}, "pools": {"train_seed": "x"}}
    with pytest.raises(ConfigError, match="student.objective: topk_kd needs the teacher's logprobs; set "
                                          "llm.teacher.top_logprobs"):
        config_from_dict(base)
    with pytest.raises(ConfigError, match=r"OpenAI's models \(gpt-4.1-mini\) tokenise with their own vocabulary"):
        config_from_dict({**base, "llm": {"teacher": {"model": "gpt-4.1-mini", "top_logprobs": 20}}})
    ok = config_from_dict({**base, "llm": {"teacher": {"base_url": "http://gpu7:8000/v1", "model": "Qwen2.5-72B",
                                                       "top_logprobs": 20}}})
    assert ok.student.objective == "topk_kd"


# --------------------------------------------------------------------------------------------- batches


def test_packed_and_padded_batches_give_the_same_kd_loss(tiny_bpe: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lion.student.data import PackedCollator, PaddedCollator, tokenize_examples

    tok = AutoTokenizer.from_pretrained(tiny_bpe)
    tokenized, _ = tokenize_examples(tok, kd_examples(tiny_bpe, repeat=1), max_length=64, fmt="plain",
                                     aligner=TokenAligner(tok))
    model = AutoModelForCausalLM.from_pretrained(tiny_bpe, dtype=torch.float32).eval()
    padded = PaddedCollator(tok.pad_token_id)(tokenized)
    packed = PackedCollator(tok.pad_token_id)([tokenized[:5], tokenized[5:]])
    assert padded["kd_ids"].shape[-1] == 5 and packed["kd_ids"].shape[:2] == packed["labels"].shape
    with torch.inference_mode():
        a = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
        b = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits
    la, na = topk_kd_loss(a, padded["labels"], padded["kd_ids"], padded["kd_logp"], 0.5)
    lb, nb = topk_kd_loss(b, packed["labels"], packed["kd_ids"], packed["kd_logp"], 0.5)
    assert int(na) == int(nb) and float(la) == pytest.approx(float(lb), rel=1e-5)
    # the targets sit on the answer tokens only
    assert ((padded["kd_ids"] >= 0).any(-1) <= (padded["labels"] != IGNORE)).all()


# --------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_topk_kd_trains_lora_and_full_packed(tiny_bpe: Path, tmp_path: Path, mode: str) -> None:
    from lion.config import LoraConfig, StudentConfig
    from lion.student.train import train_student

    cfg = StudentConfig(model=str(tiny_bpe), mode=mode, objective="topk_kd", kd_weight=0.7, lr=5e-3, max_steps=8,
                        per_device_batch_size=4, grad_accum=2, max_length=64, packing=True, pack_length=128,
                        prompt_format="plain", logging_steps=1, warmup_ratio=0.0,
                        lora=LoraConfig(r=4, alpha=8, dropout=0.0))
    res = train_student(cfg, kd_examples(tiny_bpe), tiny_bpe, tmp_path / "s", progress=False)
    m = res.metrics
    assert m["objective"] == "topk_kd" and m["kd"]["with_targets"] == 32 and m["kd"]["mismatched"] == 0
    assert m["kd"]["weight"] == 0.7 and m["kd"]["target_tokens"] > 0
    assert m["steps"] == 8 and m["train_loss_last"] < m["train_loss_first"]
    assert all(math.isfinite(x) for x in m["losses"])
    meta = json.loads((tmp_path / "s" / "lion_student.json").read_text())
    assert meta["kind"] == "full"  # LoRA merged, as for SFT


@pytest.mark.slow
def test_torchrun_two_processes_train_what_one_process_trains(tiny_bpe: Path, tmp_path: Path) -> None:
    """2 processes x 4 examples and 1 process x 8 examples see the same examples each step; the KD loss is
    normalised by the supervised tokens of the whole step on both, so the saved weights agree. Plain SGD: its step
    scales with the gradient (Adam's would hide a loss scaled by the number of processes)."""
    from transformers import AutoModelForCausalLM

    from lion.config import StudentConfig
    from lion.student.train import train_student

    common = dict(model=str(tiny_bpe), objective="topk_kd", lr=0.5, max_steps=3, grad_accum=1, max_length=64,
                  prompt_format="plain", logging_steps=1, warmup_ratio=0.0, lr_scheduler="constant",
                  training_args={"optim": "sgd"})
    examples = kd_examples(tiny_bpe, repeat=2)
    one = train_student(StudentConfig(per_device_batch_size=8, **common), examples, tiny_bpe, tmp_path / "one",
                        progress=False)
    two = train_student(StudentConfig(per_device_batch_size=4, num_gpus=2, **common), examples, tiny_bpe,
                        tmp_path / "two", progress=False)
    assert two.metrics["world_size"] == 2 and two.metrics["kd"]["with_targets"] == one.metrics["kd"]["with_targets"]
    assert two.metrics["losses"] == pytest.approx(one.metrics["losses"], rel=1e-4)
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "one").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "two").state_dict()
    base = AutoModelForCausalLM.from_pretrained(tiny_bpe).state_dict()
    moved = max((a[k] - base[k]).abs().max().item() for k in a)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert moved > 1e-3 and worst <= 1e-4 * max(1.0, moved)


# --------------------------------------------------------------------------------------------- the loop


def test_imitation_distils_the_served_top_k_end_to_end(tiny_bpe: Path, tmp_path: Path) -> None:
    """The teacher behind lion's server (hf responder, top_logprobs 5) answers the Train Pool through the gateway;
    the answer store keeps the logprobs; imitation trains the student (the teacher's own tokenizer) on them."""
    from transformers import AutoTokenizer

    from lion.config import config_from_dict
    from lion.context import RunContext
    from lion.imitation import imitation
    from lion.sim.hf_responder import HFResponder
    from lion.sim.server import SimServer

    teacher = tmp_path / "teacher"
    import shutil

    shutil.copytree(tiny_bpe, teacher)
    tok = AutoTokenizer.from_pretrained(teacher)
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    tok.save_pretrained(teacher)
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": q}) + "\n" for q, _ in STUDENT_FACTS))
    with SimServer(HFResponder(str(teacher), batch_size=8), served_models={"tiny": "tiny-2026-12-01"}) as server:
        cfg = config_from_dict({
            "run_dir": str(tmp_path / "run"), "rounds": 1,
            "llm": {"default": {"base_url": server.base_url, "model": "tiny", "max_tokens": 8, "temperature": 0.0,
                                "timeout_s": 60}, "teacher": {"top_logprobs": 5}},
            "student": {"model": str(teacher), "objective": "topk_kd", "max_steps": 2, "per_device_batch_size": 4,
                        "grad_accum": 1, "max_length": 64, "prompt_format": "plain", "lr": 1e-3},
            "pools": {"train_seed": str(seeds)}, "imitation": {"truncated": "keep"}})
        with RunContext(cfg, progress=False) as ctx:
            m = imitation(ctx, 1)
    rows = [json.loads(x) for x in (tmp_path / "run" / "teacher_answers.jsonl").read_text().splitlines()]
    assert len(rows) == len(STUDENT_FACTS) and all(r["logprobs"]["k"] == 5 for r in rows)
    assert {r["model"] for r in rows} == {"tiny-2026-12-01"}
    assert (tmp_path / "run" / "teacher_answers.logprobs.bin").is_file()
    kd = m["train"]["kd"]
    assert m["train"]["objective"] == "topk_kd" and kd["with_targets"] + kd["mismatched"] == len(STUDENT_FACTS)
    assert kd["with_targets"] >= 1
