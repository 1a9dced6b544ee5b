"""`lion export` on a real finished run (the `finished_run` fixture): every format, the datasets folder and the
card, and TRL's SFTTrainer / DPOTrainer training two steps directly on the exports.

    python -m pytest -q tests/test_export.py
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from lion.export import main as export_main
from lion.records import read_jsonl, read_pool

ROOT = Path(__file__).resolve().parents[1]
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")


def _export(run: Path, out: Path, *args: str) -> list[dict]:
    assert export_main([str(run), "--out", str(out), *args]) == 0
    return read_jsonl(out / "data.jsonl")


def _teacher_answers(run: Path) -> dict[str, str]:
    return {r["id"]: r["answer"] for r in read_jsonl(run / "teacher_answers.jsonl")}


def test_sft_formats_carry_the_teacher_answer_and_lineage(finished_run: Path, tmp_path: Path, capsys) -> None:
    answers = _teacher_answers(finished_run)
    pools = {i.id: i for r in ("round_01", "round_02") for p in ("train_pool", "cache_pool")
             if (finished_run / r / f"{p}.jsonl").exists() for i in read_pool(finished_run / r / f"{p}.jsonl")}
    split = {s["id"]: s for s in read_jsonl(finished_run / "round_01" / "split.jsonl")}
    alpaca = _export(finished_run, tmp_path / "alpaca", "--format", "alpaca")
    assert "exported" in capsys.readouterr().out
    # --all: seeds and the generated instructions of round 1 (round 2's Train Pool, answered by the final imitation)
    assert {r["id"] for r in alpaca} == set(pools) and len(alpaca) == len(pools)
    kinds = Counter(r["kind"] for r in alpaca)
    assert kinds["seed"] == 10 and kinds["hard"] + kinds["easy"] > 0
    for r in alpaca:
        inst = pools[r["id"]]
        assert (r["instruction"], r["input"], r["output"]) == (inst.instruction, inst.input, answers[r["id"]])
        assert (r["round"], r["kind"], r["parent"]) == (inst.round, inst.kind, inst.parent)
        assert r["answer_source"] == "teacher"
        if r["id"] in split and split[r["id"]]["label"] != "excluded":
            assert r["verdict"] == split[r["id"]]["label"] and r["gap"] == split[r["id"]]["gap"]
            assert r["judged_round"] == 1
        else:
            assert r["verdict"] is None and r["gap"] is None
        if inst.kind != "seed":
            assert r["parent"] in pools and r["round"] == 1
    by_id = {r["id"]: r for r in alpaca}
    share = _export(finished_run, tmp_path / "sharegpt", "--format", "sharegpt")
    msgs = _export(finished_run, tmp_path / "messages", "--format", "messages")
    for s, m in zip(share, msgs, strict=True):
        a = by_id[s["id"]]
        prompt = a["instruction"] + (f"\n\n{a['input']}" if a["input"] else "")
        assert s["conversations"] == [{"from": "human", "value": prompt}, {"from": "gpt", "value": a["output"]}]
        assert m["messages"] == [{"role": "user", "content": prompt}, {"role": "assistant", "content": a["output"]}]
        assert m["verdict"] == a["verdict"] and s["parent"] == a["parent"]


def test_round_export_is_that_rounds_train_pool_and_the_card_counts_it(finished_run: Path, tmp_path: Path) -> None:
    rows = _export(finished_run, tmp_path / "r2", "--format", "alpaca", "--round", "2")
    train2 = read_pool(finished_run / "round_02" / "train_pool.jsonl")
    assert [r["id"] for r in rows] == [i.id for i in train2]
    card = (tmp_path / "r2" / "README.md").read_text()
    assert card.startswith("---\n") and "pretty_name:" in card
    counts = Counter((i.round, i.kind) for i in train2)
    for (rnd, kind), n in counts.items():
        assert f"| {rnd} | {kind} | {n} |" in card
    assert "| teacher | scripted |" in card and "| referee | scripted |" in card and "| generator | scripted |" in card
    usage = json.loads((finished_run / "usage.json").read_text())["total"]
    assert f"USD {usage['usd']:.4f}" in card and "```yaml" in card and "tau: 1.0" in card
    assert "sk-test" not in card  # the config names the key's variable, never the key


def test_datasets_folder_holds_the_same_rows(finished_run: Path, tmp_path: Path) -> None:
    import datasets

    rows = _export(finished_run, tmp_path / "m", "--format", "messages")
    ds = datasets.load_from_disk(str(tmp_path / "m" / "dataset"))
    assert len(ds) == len(rows) and ds[0]["messages"] == rows[0]["messages"] and ds[0]["id"] == rows[0]["id"]


def test_dpo_pairs_keep_only_agreeing_orders(finished_run: Path, tmp_path: Path) -> None:
    pairs = _export(finished_run, tmp_path / "dpo", "--format", "dpo")
    split = read_jsonl(finished_run / "round_01" / "split.jsonl")
    want = [s for s in split if s["label"] != "excluded" and s["flipped"] is False
            and s["teacher_score"] != s["student_score"]]
    assert len(pairs) == len(want) > 0
    answers = _teacher_answers(finished_run)
    students = {r["id"]: r["answer"] for r in read_jsonl(finished_run / "round_01" / "student_answers.jsonl")}
    for p in pairs:
        s = next(x for x in want if x["id"] == p["id"])
        teacher_wins = s["teacher_score"] > s["student_score"]
        assert p["chosen_by"] == ("teacher" if teacher_wins else "student")
        assert (p["chosen"], p["rejected"]) == ((answers[p["id"]], students[p["id"]]) if teacher_wins
                                                else (students[p["id"]], answers[p["id"]]))
        assert p["chosen_score"] > p["rejected_score"] and p["gap"] == p["chosen_score"] - p["rejected_score"]
    card = (tmp_path / "dpo" / "README.md").read_text()
    left = len(split) - len(want)
    assert "## Left out" in card and (left == 0 or "| tie |" in card or "swap flip" in card or "excluded" in card)


def _tiny_tokenizer(run: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run / "base_model")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def test_trl_sft_trainer_trains_two_steps_on_the_messages_export(finished_run: Path, tmp_path: Path) -> None:
    import datasets
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    _export(finished_run, tmp_path / "m", "--format", "messages")
    ds = datasets.load_from_disk(str(tmp_path / "m" / "dataset"))
    args = SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=2, per_device_train_batch_size=2, report_to=[],
                     use_cpu=True, save_strategy="no", logging_steps=1, max_length=256, disable_tqdm=True)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(finished_run / "base_model"), args=args,
                         train_dataset=ds, processing_class=_tiny_tokenizer(finished_run))
    out = trainer.train()
    assert out.global_step == 2 and math.isfinite(out.training_loss) and out.training_loss > 0


def test_trl_dpo_trainer_trains_two_steps_on_the_dpo_export(finished_run: Path, tmp_path: Path) -> None:
    import datasets
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    _export(finished_run, tmp_path / "d", "--format", "dpo")
    ds = datasets.load_from_disk(str(tmp_path / "d" / "dataset"))
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=2, per_device_train_batch_size=2, report_to=[],
                     use_cpu=True, save_strategy="no", logging_steps=1, max_length=256, disable_tqdm=True)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(finished_run / "base_model"), args=args,
                         train_dataset=ds, processing_class=_tiny_tokenizer(finished_run))
    out = trainer.train()
    assert out.global_step == 2 and math.isfinite(out.training_loss)
    # the untrained policy equals the reference: the first DPO loss is log 2
    assert abs(trainer.state.log_history[0]["loss"] - math.log(2)) < 1e-3


@pytest.mark.parametrize("args, message", [
    (["--format", "alpaca", "--round", "9"], "--round 9: .* does not exist"),
    (["--format", "yaml"], "invalid choice"),
])
def test_bad_requests_are_one_line_errors(finished_run: Path, tmp_path: Path, args, message) -> None:
    p = subprocess.run([sys.executable, "-m", "lion.export", str(finished_run), "--out", str(tmp_path / "x"), *args],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    import re

    assert re.search(message, p.stderr), p.stderr
    assert not (tmp_path / "x").exists()


def test_not_a_run_directory(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "lion.export", str(tmp_path), "--format", "alpaca"],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and "config.yaml: missing" in p.stderr and "Traceback" not in p.stderr
