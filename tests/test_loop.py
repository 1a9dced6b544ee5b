"""The adversarial loop end to end on CPU: a tiny student, the real openai client, a local server with a
scripted responder (tests/loop_world.py), two rounds; crash-and-resume at several points; phases alone;
clear errors for bad seeds and inconsistent run directories.

Seeds: the repository's data/smoke_seed.jsonl (synthetic tasks of the offline world, first 10 rows), so a clean
clone without ../shared runs these tests; decontamination reads tests/data/loop_eval_questions.jsonl."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from lion.config import config_from_dict
from lion.errors import DataError, LionError
from lion.records import read_jsonl
from lion.run import lion_loop
from lion.sim.server import SimServer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loop_world import LoopResponder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "data" / "smoke_seed.jsonl"
EVAL_QUESTIONS = ROOT / "tests" / "data" / "loop_eval_questions.jsonl"
MAX_IN_FLIGHT = 4


class CountingResponder:
    """Wraps the scripted world and records every completed call's key (messages + sampling + seed)."""

    def __init__(self) -> None:
        self.inner = LoopResponder()
        self.keys: list[str] = []
        self.in_progress = 0

    def respond(self, body: dict[str, Any]) -> str:
        key = json.dumps([body["messages"], body.get("seed"), body.get("temperature"), body.get("max_tokens")],
                         sort_keys=True)
        self.in_progress += 1
        try:
            return self.inner.respond(body)
        finally:
            self.in_progress -= 1
            self.keys.append(key)


def loop_config(run_dir: Path, base_url: str, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "run_dir": str(run_dir),
        "seed": 3,
        "rounds": 2,
        "final_imitation": False,
        "llm": {
            "default": {"base_url": base_url, "model": "scripted", "api_key_env": "LION_TEST_KEY",
                        "rpm": 60000, "tpm": 1e8, "max_in_flight": MAX_IN_FLIGHT, "max_attempts": 3,
                        "backoff_initial_s": 0.05, "backoff_max_s": 0.2, "timeout_s": 10},
            "prices": {"scripted": {"input": 1.0, "output": 2.0}},
        },
        "student": {
            "model": "tiny", "tiny": {"vocab": "char", "hidden": 32, "layers": 1, "heads": 2},
            "max_length": 256, "max_steps": 4, "per_device_batch_size": 8, "grad_accum": 1, "lr": 1e-3,
            "infer": {"backend": "transformers", "max_new_tokens": 12, "batch_size": 16},
        },
        "pools": {"train_seed": str(SEEDS), "limit": 10},
        "generation": {"n_hard": 3, "n_easy": 3, "batch_size": 8,
                       "decontaminate": [str(EVAL_QUESTIONS)]},
    }
    for k, v in over.items():
        cfg[k] = v
    return cfg


@pytest.fixture
def server():
    responder = CountingResponder()
    srv = SimServer(responder, latency_ms=5)
    url = srv.start()
    srv.responder_ref = responder  # type: ignore[attr-defined]
    yield srv, url, responder
    srv.stop()


ARTIFACTS = ["train_pool.jsonl", "cache_pool.jsonl", "student_answers.jsonl", "judgements.jsonl", "split.jsonl",
             "generated.jsonl", "rejected.jsonl"]


def artifacts(run_dir: Path) -> dict[str, Any]:
    out = {}
    for rd in sorted(run_dir.glob("round_*")):
        for name in ARTIFACTS:
            p = rd / name
            if p.exists():
                out[f"{rd.name}/{name}"] = read_jsonl(p)
    answers = read_jsonl(run_dir / "teacher_answers.jsonl")
    out["teacher_answers"] = sorted(json.dumps(a, sort_keys=True) for a in answers)
    return out


def test_two_rounds_end_to_end(tmp_path: Path, server, monkeypatch, capsys):
    """Two rounds leave every artifact consistent, buy each call once, leak no secret; reruns replay, --rounds grows."""
    srv, url, responder = server
    monkeypatch.setenv("LION_TEST_KEY", "sk-test-SECRET-0123456789")
    cfg = config_from_dict(loop_config(tmp_path / "run", url))
    rounds = lion_loop(cfg, progress=False)
    assert [m["round"] for m in rounds] == [1, 2]
    run = tmp_path / "run"
    for r in (1, 2):
        rd = run / f"round_{r:02d}"
        for phase in ("imitation", "discrimination", "generation"):
            assert (rd / f"{phase}.done").exists()
        split = read_jsonl(rd / "split.jsonl")
        labels = Counter(s["label"] for s in split)
        assert labels["hard"] > 0 and labels["easy"] > 0, labels
        judgements = read_jsonl(rd / "judgements.jsonl")
        assert {j["order"] for j in judgements} == {"ref_first", "cand_first"}  # the teacher (reference) or the student shown first
        # the scripted referee answers garbage on the first sample for some pairs: retried, never a number
        assert all((j["teacher_score"] is None) == (not j["ok"]) for j in judgements)
        generated = read_jsonl(rd / "generated.jsonl")
        assert generated and all(g["round"] == r and g["kind"] in ("hard", "easy") and g["parent"] for g in generated)
        cache_ids = {c["id"] for c in read_jsonl(rd / "cache_pool.jsonl")}
        assert all(g["parent"] in cache_ids for g in generated)
        m = json.loads((rd / "metrics.json").read_text())
        assert m["discrimination"]["hard"] == labels["hard"]
        assert m["generation"]["accepted"]["hard"] + m["generation"]["accepted"]["easy"] == len(generated)
    # the scripted referee writes no verdict on the first sample for some pairs; the retry is a new sample
    # (sent with seed=1), which the server answers differently, so those pairs end judged after 2 attempts
    all_judgements = [j for r in (1, 2) for j in read_jsonl(run / f"round_{r:02d}" / "judgements.jsonl")]
    assert any(j["ok"] and j["attempts"] == 2 for j in all_judgements)
    # round 2's Train Pool is round 1's new instructions (replace), its Cache Pool the union
    new1 = {g["id"] for g in read_jsonl(run / "round_01" / "generated.jsonl")}
    assert {t["id"] for t in read_jsonl(run / "round_02" / "train_pool.jsonl")} == new1
    cache1 = {c["id"] for c in read_jsonl(run / "round_01" / "cache_pool.jsonl")}
    assert {c["id"] for c in read_jsonl(run / "round_02" / "cache_pool.jsonl")} == cache1 | new1
    # each teacher answer bought once although imitation and discrimination both need it
    teacher_calls = [k for k in responder.keys if "knowledgeable" in k]
    assert len(teacher_calls) == len(set(teacher_calls))
    # a seed drawn again in round 2 is asked for a new sample, not replayed from round 1's cache (which would
    # only come back as a near-duplicate of the instruction round 1 kept)
    def parents(r: int) -> set[tuple[str, str]]:
        rd = run / f"round_{r:02d}"
        return {(g["kind"], g["parent"]) for name in ("generated.jsonl", "rejected.jsonl")
                for g in read_jsonl(rd / name)}
    assert parents(1) & parents(2), "no seed was drawn in both rounds: the check below would test nothing"
    generator_calls = [k for k in responder.keys if "TASK:" in k]
    assert len(generator_calls) == len(set(generator_calls))
    usage = json.loads((run / "usage.json").read_text())
    assert sum(u["cached"] for u in usage["by"] if u["role"] == "generator") == 0
    out = capsys.readouterr().out
    assert "hard%" in out and "round 2:" in out
    # nothing secret in the run directory
    for p in run.rglob("*"):
        if p.is_file() and p.suffix in (".json", ".jsonl", ".yaml", ".sqlite", ".txt", ".log"):
            assert b"SECRET" not in p.read_bytes(), p

    # a second run of the same config replays everything: zero new calls
    before = len(responder.keys)
    lion_loop(cfg, progress=False, echo=False)
    assert len(responder.keys) == before
    # raising --rounds continues the finished run
    cfg3 = config_from_dict(loop_config(tmp_path / "run", url, rounds=3))
    lion_loop(cfg3, progress=False, echo=False)
    assert (run / "round_03" / "generation.done").exists()


def _run_cli(cfg_path: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lion.run", "--config", str(cfg_path), "--no-progress"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume_equals_uninterrupted(tmp_path: Path, server):
    """SIGKILLed at several points and resumed, a run equals an uninterrupted one; only in-flight calls are re-sent."""
    srv, url, responder = server
    env = {**os.environ, "LION_TEST_KEY": "sk-test-key", "PYTHONUNBUFFERED": "1"}

    # the uninterrupted reference run
    ref_cfg = tmp_path / "ref.yaml"
    ref_cfg.write_text(yaml.safe_dump(loop_config(tmp_path / "ref", url)))
    p = _run_cli(ref_cfg, env)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    n_ref = len(responder.keys)

    # the same run, killed at several points
    cfg_path = tmp_path / "killed.yaml"
    cfg_path.write_text(yaml.safe_dump(loop_config(tmp_path / "killed", url)))
    run = tmp_path / "killed"
    points = [
        ("mid teacher batch", lambda: len(responder.keys) >= n_ref + 4),
        ("round 1 training", lambda: not (run / "round_01" / "imitation.done").exists()
         and (run / "teacher_answers.jsonl").exists()
         and len((run / "teacher_answers.jsonl").read_text().splitlines()) >= 10),
        ("mid referee batch", lambda: (run / "round_01" / "judgements.jsonl").exists() is False
         and (run / "round_01" / "student_answers.jsonl").exists() and len(responder.keys) > n_ref + 14),
        ("after round 1", lambda: (run / "round_01" / "generation.done").exists()),
        ("round 2 generation", lambda: (run / "round_02" / "discrimination.done").exists()),
    ]
    def lost() -> int:  # calls the server completed for this run that its cache does not hold
        db = run / "calls.sqlite"
        cached = 0
        if db.exists():
            with sqlite3.connect(db) as con:
                cached = con.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
        return len(responder.keys) - n_ref - cached

    lost_at_kills = []
    for _point, cond in points:
        before = lost()
        p = _run_cli(cfg_path, env)
        deadline = time.time() + 240
        while not cond() and p.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            time.sleep(0.3)  # let the server finish answering the dead client
            lost_at_kills.append(lost() - before)
    kills = len(lost_at_kills)
    p = _run_cli(cfg_path, env)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out

    assert kills >= 4, f"only {kills} kill points were reached"
    assert artifacts(run) == artifacts(tmp_path / "ref")
    killed_keys = responder.keys[n_ref:]
    dupes = sum(c - 1 for c in Counter(killed_keys).values())
    # only calls in flight at a kill (answered by the server, never received by the dead client) are re-sent
    assert all(n <= MAX_IN_FLIGHT for n in lost_at_kills), lost_at_kills
    assert dupes <= sum(lost_at_kills), f"{dupes} calls paid twice; only {lost_at_kills} were in flight at the kills"
    assert len(set(killed_keys)) == len(set(responder.keys[:n_ref]))


def test_phases_run_alone_and_refuse_out_of_order(tmp_path: Path, server, monkeypatch):
    """Each phase runs alone as its own CLI; a phase before its predecessor, or a round too far, is a one-line error."""
    srv, url, _ = server
    monkeypatch.setenv("LION_TEST_KEY", "k")
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(loop_config(tmp_path / "run", url, rounds=1)))
    base = [sys.executable, "-m"]
    env = {**os.environ, "LION_TEST_KEY": "k"}
    bad = subprocess.run(base + ["lion.generation", "--config", str(cfg_path), "--round", "1"],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert bad.returncode == 2 and "discrimination first" in bad.stderr and "Traceback" not in bad.stderr
    for phase in ("imitation", "discrimination", "generation"):
        r = subprocess.run(base + [f"lion.{phase}", "--config", str(cfg_path), "--round", "1"],
                           capture_output=True, text=True, env=env, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "run" / "round_01" / f"{phase}.done").exists()
    bad = subprocess.run(base + ["lion.imitation", "--config", str(cfg_path), "--round", "3"],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert bad.returncode == 2 and "round 2" in bad.stderr


def test_resume_refuses_a_changed_critical_key(tmp_path: Path, server, monkeypatch):
    """Resuming a run with a changed critical config key (discrimination.tau) is refused, naming both values."""
    _, url, _ = server
    monkeypatch.setenv("LION_TEST_KEY", "k")
    cfg = loop_config(tmp_path / "run", url, rounds=0)
    lion_loop(config_from_dict(cfg), progress=False, echo=False)
    cfg["discrimination"] = {"tau": 2.0}
    with pytest.raises(LionError, match=r"discrimination.tau: changed from 1.0 to 2.0"):
        lion_loop(config_from_dict(cfg), progress=False, echo=False)


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"instruction": "Say hi."}\n{"instruction": 42}\n', r"seeds.jsonl:2: the instruction is empty or not a string"),
        ('{"prompt_text": "x"}\n', r"seeds.jsonl:1: no instruction field"),
    ],
)
def test_bad_seed_file_is_a_clear_error(tmp_path: Path, server, monkeypatch, content, message):
    """A bad or missing seed file is a DataError naming the file and line."""
    _, url, _ = server
    monkeypatch.setenv("LION_TEST_KEY", "k")
    (tmp_path / "seeds.jsonl").write_text(content)
    cfg = loop_config(tmp_path / "run", url)
    cfg["pools"] = {"train_seed": str(tmp_path / "seeds.jsonl")}
    with pytest.raises(DataError, match=message):
        lion_loop(config_from_dict(cfg), progress=False, echo=False)
    cfg = loop_config(tmp_path / "run2", url)
    cfg["pools"] = {"train_seed": str(tmp_path / "missing.jsonl")}
    with pytest.raises(DataError, match="missing.jsonl: file not found"):
        lion_loop(config_from_dict(cfg), progress=False, echo=False)


def test_shadow_selectors_split_a_fixed_sample_of_the_cache_pool(tmp_path: Path, server, monkeypatch):
    """discrimination.shadow_sample: the shadow splits exactly the items drawn by (seed, round, id), about that
    share of them; the run's own split covers the whole pool."""
    from lion.discrimination import in_shadow_sample

    _, url, _ = server
    monkeypatch.setenv("LION_TEST_KEY", "sk-test")
    cfg = config_from_dict(loop_config(tmp_path / "run", url, rounds=1, pools={"train_seed": str(SEEDS), "limit": 40},
                                       discrimination={"shadow_selectors": ["student_loss"], "shadow_sample": 0.5}))
    lion_loop(cfg, progress=False, echo=False)
    rd = tmp_path / "run" / "round_01"
    own = [s["id"] for s in read_jsonl(rd / "split.jsonl")]
    shadow = [s["id"] for s in read_jsonl(rd / "shadow_student_loss_split.jsonl")]
    assert len(own) == 40
    assert shadow == [i for i in own if in_shadow_sample(cfg.seed, 1, i, 0.5)]
    assert 10 <= len(shadow) <= 30
    disc = json.loads((rd / "discrimination.json").read_text())
    assert disc["shadows"]["student_loss"]["n_compared"] <= len(shadow)
