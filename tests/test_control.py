"""The control student (eval.control) and the standard benchmarks (eval.benchmarks) in short offline runs: the
oracle world on the local server, the real openai client and gateway, a tiny student, lm-eval on a task of our own
over a local JSON file.

    python -m pytest -q tests/test_control.py
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from lion.config import config_from_dict
from lion.context import RunContext
from lion.errors import ConfigError
from lion.records import instruction_id, iter_instructions, read_jsonl
from lion.run import lion_loop

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "data" / "smoke_seed.jsonl"
LIMIT = 40


def config(run_dir: Path, **eval_over: Any) -> dict[str, Any]:
    return {
        "run_dir": str(run_dir), "seed": 0, "rounds": 2, "final_imitation": True,
        "llm": {"default": {"provider": "openai", "model": "oracle", "temperature": 0.0, "max_tokens": 64,
                            "rpm": 100000, "tpm": 1e8, "max_in_flight": 16, "timeout_s": 30},
                "prices": {"oracle": {"input": 0.5, "output": 1.5}}},
        "sim": {"enabled": True, "responder": "oracle",
                "options": {"seed": 0, "referee_noise": 0.5, "position_bias": 0.5}},
        "student": {"model": "tiny", "tiny": {"vocab": "char", "hidden": 32, "layers": 1, "heads": 2},
                    "mode": "full", "prompt_format": "plain", "max_length": 160, "max_steps": 4,
                    "per_device_batch_size": 16, "grad_accum": 1,
                    "infer": {"backend": "transformers", "batch_size": 64, "max_new_tokens": 12}},
        "pools": {"train_seed": str(SEEDS), "limit": LIMIT, "train_pool": "accumulate"},
        "generation": {"n_hard": 10, "n_easy": 10, "batch_size": 32, "rouge_threshold": 0.9},
        "eval": {"every_round": True, "questions": "oracle", "oracle_per_family": 2, **eval_over},
    }


def local_task(folder: Path, name: str = "lion_tiny_mc", rows: int = 6) -> Path:
    """A multiple-choice lm-eval task of our own over a local JSON file (offline: the hub is never asked)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    words = ["cat", "dog", "sun", "map", "pen", "cup", "hat", "box"]
    data.write_text("".join(json.dumps({"question": f"Convert to uppercase: {w}", "choices": [w.upper(), w, w[::-1]],
                                        "answer": 0}) + "\n" for w in words[:rows]))
    (folder / f"{name}.yaml").write_text(yaml.safe_dump({
        "task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "Q: {{question}}\nA:",
        "doc_to_choice": "{{choices}}", "doc_to_target": "answer",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}))
    return data


def usage_by(run: Path) -> dict[tuple[str, str], dict[str, Any]]:
    usage = json.loads((run / "usage.json").read_text())
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for row in usage["by"]:
        acc = out.setdefault((row["role"], row["phase"]), {"calls": 0, "cached": 0})
        acc["calls"] += row["calls"]
        acc["cached"] += row["cached"]
    return out


def loop_files(run: Path) -> dict[str, Any]:
    """The loop's own results (not the control's): pools, splits, new instructions, evaluation tables."""
    out = {}
    for rd in sorted(run.glob("round_*")):
        for name in ("train_pool.jsonl", "cache_pool.jsonl", "split.jsonl", "generated.jsonl", "eval/table.jsonl"):
            p = rd / name
            if p.exists():
                out[f"{rd.name}/{name}"] = read_jsonl(p)
    return out


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.mark.slow
def test_plain_control_beside_the_loop_with_a_local_benchmark(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """Rounds 2 and 3 get a control student with as many unused seed instructions as the loop's new ones; both are
    judged on the same questions and compared with a CI; its calls are booked apart; the loop's own results are
    those of the same run without a control; the benchmark runs on every student."""
    local_task(tmp_path / "tasks")
    bench = {"tasks": ["lion_tiny_mc"], "include_path": str(tmp_path / "tasks"), "batch_size": 8}
    run = tmp_path / "run"
    rounds = lion_loop(config_from_dict(config(run, control="plain", benchmarks=bench)), progress=False)
    printed = capsys.readouterr().out
    plain = tmp_path / "plain"
    lion_loop(config_from_dict(config(plain)), progress=False, echo=False)
    assert loop_files(run) == loop_files(plain)  # the control changes nothing of the loop's own work

    assert not (run / "round_01" / "control").exists()  # round 1 has no new instructions: nothing to control
    seed_ids = [i.id for i in iter_instructions(str(SEEDS))]
    heldout = {instruction_id(q["instruction"]) for q in read_jsonl(run / "round_01" / "eval" / "questions.jsonl")}
    loop_pools = {r["id"] for p in run.glob("round_*/*_pool.jsonl") for r in read_jsonl(p)}
    drawn: list[str] = []
    for r in (2, 3):
        cd = run / f"round_{r:02d}" / "control"
        sel = json.loads((cd / "selection.json").read_text())
        n_loop = len(read_jsonl(run / f"round_{r - 1:02d}" / "generated.jsonl"))
        new = [row["id"] for row in read_jsonl(cd / "new.jsonl")]
        assert sel["rule"] == "plain" and sel["new"] == sel["wanted"] == n_loop == len(new) > 0
        assert sel["branched_from"] == ("loop round 1" if r == 2 else "control round 2")
        # unused seed rows: in the seed file beyond pools.limit, in no pool of the loop, no held-out question
        assert all(i in seed_ids[LIMIT:] for i in new) and not set(new) & (loop_pools | heldout | set(drawn))
        drawn += new
        prev_train = run / ("round_01/train_pool.jsonl" if r == 2 else "round_02/control/train_pool.jsonl")
        assert [t["id"] for t in read_jsonl(cd / "train_pool.jsonl")] == \
            [t["id"] for t in read_jsonl(prev_train)] + new  # accumulate, like the loop's
        assert (cd / "imitation.done").exists() and (cd / "student" / "config.json").exists()
        c = json.loads((cd / "comparison.json").read_text())
        assert c["n"] == len(heldout) and c["ci_low"] <= c["difference"] <= c["ci_high"]
        assert c["difference"] == pytest.approx(c["loop"] - c["control"])
        assert c["loop"] == pytest.approx(json.loads((run / f"round_{r:02d}" / "eval.json").read_text())
                                          ["overall"]["relative"]["mean"])
        m = rounds[r - 1]
        assert m["control"]["comparison"] == c and m["control"]["benchmarks"]["n_finished"] == 1
        line = next(x for x in printed.splitlines() if x.startswith(f"round {r}:"))
        assert f"[control plain: new {len(new)}, loop {c['loop']:.1f} vs control {c['control']:.1f}: " \
               f"{c['difference']:+.1f} [{c['ci_low']:+.1f}, {c['ci_high']:+.1f}] (n={c['n']})" in line
    # the benchmark ran on every student (the loop's three, the control's two), once each
    for path in ["round_01/eval", "round_02/eval", "round_03/eval", "round_02/control/eval", "round_03/control/eval"]:
        res = json.loads((run / path / "benchmarks" / "lion_tiny_mc.json").read_text())
        assert res["headline"]["metric"] == "acc,none" and 0 <= res["headline"]["value"] <= 1
        assert res["results"]["lion_tiny_mc"]["sample_len"] == 6
    assert "bench " in next(x for x in printed.splitlines() if x.startswith("round 1:"))
    header = next(x for x in printed.splitlines() if x.lstrip().startswith("round  train"))
    assert all(h in header for h in ("ctrl rel%", "loop-ctrl", "95% CI", "bench%", "ctrl bench%"))

    # the ledger books the control apart: its teacher answers and its judge calls, in rounds 2 and 3 only
    by = usage_by(run)
    n_drawn = len(drawn)
    assert by[("teacher", "control-imitation")]["calls"] == n_drawn  # each unused seed answered once, paid once
    assert 0 < by[("judge", "control-eval")]["calls"] + by[("judge", "control-eval")]["cached"] <= 2 * 2 * len(heldout)
    assert ("generator", "control-generation") not in by  # plain asks no generator
    plain_by = usage_by(plain)
    assert {k: v for k, v in by.items() if not k[1].startswith("control-")} == plain_by

    # status, the report and the trackers' scalars show it
    from lion.report import build_report
    from lion.status import format_status, run_status
    from lion.trackers import round_scalars

    status = format_status(run_status(run))
    assert "control: selection done, imitation done, eval done, comparison done" in status
    assert "of which the control student (phases control-*)" in status
    html_path, summary = build_report(run)
    html = html_path.read_text()
    assert "Loop vs control: relative score per round" in html and "Loop - control with its 95% CI" in html
    assert "Benchmarks per round" in html and "control (plain) round 3: loop" in summary
    sc = round_scalars(rounds[1])
    assert sc["control/difference"] == pytest.approx(rounds[1]["control"]["comparison"]["difference"])
    assert "bench/lion_tiny_mc" in sc and "control/bench/lion_tiny_mc" in sc and "bench/mean" in sc

    # the draw of unused seeds is a function of (seed, round): drawn again, the same rows
    from lion.pools import unused_seeds

    cfg = config_from_dict(config(run, control="plain", benchmarks=bench))
    with RunContext(cfg, progress=False) as ctx:
        again = unused_seeds(ctx, n_loop, 3, exclude=[run / "round_02" / "control" / "train_pool.jsonl"],
                             salt="control")
    assert [i.id for i in again] == drawn[len(drawn) - n_loop:]


def test_control_added_to_a_run_already_going_joins_at_its_next_round(tmp_path: Path):
    """Switched on after two rounds, the control starts at round 3, branched off the loop's round 2; another rule
    later is refused naming the key; none stops it and keeps what it made."""
    run = tmp_path / "run"
    first = config(run)
    first["final_imitation"] = False
    lion_loop(config_from_dict(first), progress=False, echo=False)
    grown = config(run, control="self_instruct")
    grown["rounds"] = 3
    grown["final_imitation"] = False
    rounds = lion_loop(config_from_dict(grown), progress=False, echo=False)
    assert json.loads((run / "state.json").read_text())["control"] == {"rule": "self_instruct", "from_round": 3}
    assert not (run / "round_02" / "control").exists() and "control" not in rounds[1]
    sel = json.loads((run / "round_03" / "control" / "selection.json").read_text())
    assert sel["branched_from"] == "loop round 2" and sel["rule"] == "self_instruct"
    # self_instruct: grown by the generator from the control's Cache Pool (the loop's of round 2 here), the hard and
    # easy templates in the loop's proportion of round 2, and booked under control-generation
    loop_gen = json.loads((run / "round_02" / "generation.json").read_text())
    assert sel["generation"]["wanted"] == loop_gen["accepted"]
    new = read_jsonl(run / "round_03" / "control" / "new.jsonl")
    parents = {r["id"] for r in read_jsonl(run / "round_02" / "cache_pool.jsonl")}
    assert new and all(r["kind"] in ("hard", "easy") and r["parent"] in parents for r in new)
    cache3 = {r["id"] for r in read_jsonl(run / "round_03" / "control" / "cache_pool.jsonl")}
    assert cache3 == parents | {r["id"] for r in new}
    by = usage_by(run)
    assert by[("generator", "control-generation")]["calls"] >= len(new)
    assert rounds[2]["control"]["comparison"]["n"] > 0

    with pytest.raises(ConfigError, match=r"eval.control: this run's control track is 'self_instruct' from round 3"):
        lion_loop(config_from_dict({**grown, "eval": {**grown["eval"], "control": "plain"}}), progress=False,
                  echo=False)
    stopped = {**grown, "rounds": 4, "eval": {**grown["eval"], "control": "none"}}
    rounds = lion_loop(config_from_dict(stopped), progress=False, echo=False)
    assert not (run / "round_04" / "control").exists() and "control" in rounds[2] and "control" not in rounds[3]


def test_plain_control_without_enough_unused_seeds_is_refused_before_anything_is_spent(tmp_path: Path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(SEEDS.read_text().splitlines(keepends=True)[:LIMIT + 15]))
    data = config(tmp_path / "run", control="plain")
    data["pools"]["train_seed"] = str(seeds)
    with pytest.raises(ConfigError) as e:
        lion_loop(config_from_dict(data), progress=False, echo=False)
    msg = str(e.value)
    assert msg.startswith("eval.control: plain draws") and "up to 40 (20 a round" in msg and "rounds 2-3" in msg
    assert "only 15 beyond the pools (pools.limit 40)" in msg
    assert not list((tmp_path / "run").glob("round_*"))
    if (tmp_path / "run" / "calls.sqlite").exists():
        with sqlite3.connect(tmp_path / "run" / "calls.sqlite") as db:
            assert db.execute("select count(*) from calls").fetchone()[0] == 0
    from lion.plan import format_plan, make_plan

    assert "eval.control: plain needs up to 40 seed instructions no pool has used and the seed files hold 15" in \
        format_plan(make_plan(config_from_dict(data)))


def test_plan_prices_the_control_before_anything_is_spent(tmp_path: Path):
    from lion.plan import format_plan, make_plan

    base = make_plan(config_from_dict(config(tmp_path / "a")))
    for rule, phases in (("plain", {"control-imitation", "control-eval"}),
                         ("self_instruct", {"control-generation", "control-imitation", "control-eval"})):
        plan = make_plan(config_from_dict(config(tmp_path / "a", control=rule)))
        steps = [s for s in plan.steps if s.phase.startswith("control-")]
        assert {s.phase for s in steps} == phases and {s.round for s in steps} == {2, 3}
        loop = {(s.round, s.phase, s.role): s.calls for s in base.steps}
        for s in steps:  # as many calls as the loop's own step of the same kind: imitation and evaluation of the
            # same round; generation of round 1 (the loop's generation asks as many every round, and ends at round 2)
            kind = s.phase.removeprefix("control-")
            assert s.calls == loop[(1 if kind == "generation" else s.round, kind, s.role)]
        assert plan.control["calls"] == sum(s.calls for s in steps)
        assert plan.total()["usd_online"] == pytest.approx(base.total()["usd_online"] + plan.control["usd_online"])
        assert f"of which the control student (eval.control: {rule})" in format_plan(plan)
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_benchmark_names_are_checked_before_anything_is_spent_and_a_failing_task_loses_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """An unknown task: a ConfigError naming the key and the task, nothing run. A task that fails mid-round: one
    warning line naming it, recorded; the other task's results and the loop's phases go on; the next run retries
    it and leaves the finished one alone."""
    good = local_task(tmp_path / "tasks", "lion_tiny_mc")
    bad_data = local_task(tmp_path / "tasks", "lion_tiny_broken")
    run = tmp_path / "run"
    data = config(run, benchmarks={"tasks": ["lion_tiny_mc", "lion_tiny_mcc"], "include_path": str(tmp_path / "tasks")})
    data["rounds"], data["final_imitation"] = 1, False
    with pytest.raises(ConfigError, match=r"eval.benchmarks.tasks: unknown task 'lion_tiny_mcc' \(did you mean "
                                          r"lion_tiny_mc"):
        lion_loop(config_from_dict(data), progress=False, echo=False)
    assert not list(run.glob("round_*"))

    data["eval"]["benchmarks"]["tasks"] = ["lion_tiny_mc", "lion_tiny_broken"]
    bad_data.write_text("{not json\n")  # known to lm-eval, fails when it loads its data
    lion_loop(config_from_dict(data), progress=False)
    out, err = capsys.readouterr()
    warn = [x for x in err.splitlines() if x.startswith("warning: eval.benchmarks: task lion_tiny_broken")]
    assert len(warn) == 1 and "the loop goes on" in warn[0]
    ev = run / "round_01" / "eval"
    assert (run / "round_01" / "generation.done").exists()  # the loop's phases ran to the end
    assert json.loads((ev / "benchmarks" / "lion_tiny_broken.error.json").read_text())["task"] == "lion_tiny_broken"
    summary = json.loads((ev / "benchmarks.json").read_text())
    assert list(summary["failed"]) == ["lion_tiny_broken"] and summary["n_finished"] == 1
    assert "bench " in out and "(1 failed: lion_tiny_broken)" in out
    kept = (ev / "benchmarks" / "lion_tiny_mc.json").stat().st_mtime_ns

    local_task(tmp_path / "tasks", "lion_tiny_broken")  # repaired: the next run retries it, and only it
    lion_loop(config_from_dict(data), progress=False, echo=False)
    assert (ev / "benchmarks" / "lion_tiny_mc.json").stat().st_mtime_ns == kept
    assert not (ev / "benchmarks" / "lion_tiny_broken.error.json").exists()
    assert json.loads((ev / "benchmarks.json").read_text())["n_finished"] == 2
    assert good.exists()


@pytest.mark.slow
def test_a_kill_in_the_control_training_resumes_from_its_checkpoint(tmp_path: Path):
    """SIGKILLed while the control student trains (after a checkpoint), the same command finishes the run: the
    control training continues from its checkpoint, the loop's finished phases are not redone, no call is paid
    twice."""
    run = tmp_path / "run"
    data = config(run, control="plain")
    data["rounds"], data["final_imitation"] = 2, False
    data["student"].update(max_steps=60, save_steps=15, save_total_limit=1)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "lion.run", "--config", str(path), "--no-progress"]
    p = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpt = run / "round_02" / "control" / "student.ckpt"
    deadline = time.time() + 500
    while p.poll() is None and time.time() < deadline and not list(ckpt.glob("checkpoint-*/lion_checkpoint.json")):
        time.sleep(0.05)
    assert p.poll() is None, "the run ended before the control's training wrote a checkpoint"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not (run / "round_02" / "control" / "imitation.done").exists()
    loop_done = {f: f.read_text() for f in run.glob("round_0*/*.done")}
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert {f: f.read_text() for f in loop_done} == loop_done  # finished phases were not run again
    im = json.loads((run / "round_02" / "control" / "imitation.json").read_text())
    assert im["train"]["resumed_at"] and im["train"]["resumed_at"][0] >= 15
    assert (run / "round_02" / "control" / "comparison.json").exists()
    assert "[control plain: new" in out.stdout
    with sqlite3.connect(run / "calls.sqlite") as db:
        cached_rows = db.execute("select count(*) from calls").fetchone()[0]
    paid = sum(r["calls"] for r in json.loads((run / "usage.json").read_text())["by"])
    assert paid == cached_rows  # every paid call is one cache row: none paid twice


def test_benchmarks_run_a_lora_student_through_peft_and_do_not_run_a_finished_task_again(tmp_path: Path):
    """A LoRA student (an adapter directory on its base) is benchmarked as lm-eval's hf model with peft= (its
    logits are the merged model's); a finished task is read back, a changed setting runs it again."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lion.benchmarks import run_benchmarks
    from lion.layout import EvalPaths
    from lion.student.tiny import build_tiny

    base = build_tiny(tmp_path / "base", hidden=32, layers=1, heads=2, max_position_embeddings=256)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(base).save_pretrained(adapter)
    merged = tmp_path / "merged"
    model.merge_and_unload().save_pretrained(merged)
    AutoTokenizer.from_pretrained(base).save_pretrained(merged)
    assert not (adapter / "config.json").exists()  # a plain PEFT adapter directory

    local_task(tmp_path / "tasks", rows=8)
    data = config(tmp_path / "run", benchmarks={"tasks": ["lion_tiny_mc"], "include_path": str(tmp_path / "tasks")})
    cfg = config_from_dict(data)
    from lion.benchmarks import make_lm

    lm = make_lm(cfg, adapter)  # lm-eval's hf model: the base with the adapter through peft=
    assert type(lm.model).__name__.startswith("Peft")
    ids = torch.tensor([[5, 40, 41, 42, 43]])
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(merged)(ids).logits
        assert torch.allclose(lm.model(ids).logits, want, atol=1e-5)
    del lm
    out_a = EvalPaths(tmp_path / "a")
    a = run_benchmarks(cfg, adapter, out_a, name="adapter")
    res_a = json.loads(out_a.benchmark("lion_tiny_mc").read_text())
    assert res_a["settings"]["model"] == str(adapter.resolve()) and res_a["results"]["lion_tiny_mc"]["sample_len"] == 8
    assert a["mean"] == a["tasks"]["lion_tiny_mc"]["value"] and a["n_finished"] == 1 and not a["failed"]
    before = out_a.benchmark("lion_tiny_mc").stat().st_mtime_ns
    assert run_benchmarks(cfg, adapter, out_a, name="adapter") == a  # finished: read back, not run again
    assert out_a.benchmark("lion_tiny_mc").stat().st_mtime_ns == before
    data["eval"]["benchmarks"]["limit"] = 3  # another setting: run again
    again = run_benchmarks(config_from_dict(data), adapter, out_a, name="adapter")
    assert json.loads(out_a.benchmark("lion_tiny_mc").read_text())["results"]["lion_tiny_mc"]["sample_len"] == 3
    assert again["n_finished"] == 1


def test_a_resumed_run_keeps_each_finished_rounds_spend_snapshot(tmp_path: Path):
    """Resuming a run gathers the finished rounds' figures again; their spend stays what the ledger said when each
    round first finished (it was overwritten with the spend at the resume, so after a kill in round 2 round 1
    showed round 2's spend too, and lion.plan --calibrate took a wrong per-round share)."""
    run = tmp_path / "run"
    one = config(run)
    one["rounds"], one["final_imitation"] = 1, False
    first = lion_loop(config_from_dict(one), progress=False, echo=False)
    snap = first[0]["usage"]["total"]
    two = {**one, "rounds": 2}
    from lion.imitation import imitation
    from lion.pools import prepare_round

    with RunContext(config_from_dict(two), progress=False) as ctx:  # round 2 half done, as by a run killed there
        prepare_round(ctx, 2)
        imitation(ctx, 2)
    rounds = lion_loop(config_from_dict(two), progress=False, echo=False)
    assert rounds[0]["usage"]["total"] == snap
    assert json.loads((run / "round_01" / "metrics.json").read_text())["usage"]["total"] == snap
    assert rounds[1]["usage"]["total"]["usd"] > snap["usd"]
    from lion.plan import measured_rounds

    share = measured_rounds(run)
    assert share[(1, "teacher", "imitation")]["calls"] == snap["calls"] - sum(
        v["calls"] for k, v in share.items() if k[0] == 1 and k != (1, "teacher", "imitation"))
