"""Student inference resumes mid-way and never crashes on an over-long prompt.

    python -m pytest -q tests/test_student_answers_resume.py

- killed mid-inference (transformers here; a real vLLM engine in tests/test_vllm_real.py), a restart
  generates only the missing answers, and the file ends with each answer once, equal to an uninterrupted run;
- a torn last line left by the kill is cut off before the next append;
- vLLM hands answers over per `chunk_size` prompts (one engine, and data-parallel engines, which need GPUs: the
  recording fake in tests/fake_vllm);
- a prompt longer than the student's context is skipped and recorded, never truncated, and discrimination
  excludes it with the reason.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from lion.answers import student_answers
from lion.config import InferConfig, config_from_dict
from lion.records import Instruction, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
FAKE_DIR = ROOT / "tests" / "fake_vllm"

DRIVER = """
import sys
from pathlib import Path
from types import SimpleNamespace
from lion.answers import student_answers
from lion.config import config_from_dict
from lion.records import Instruction
model, out, n, backend = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
infer = {"backend": backend, "batch_size": 2, "chunk_size": 3, "max_new_tokens": 24, "cpu_threads": 1}
cfg = config_from_dict({"student": {"model": model, "prompt_format": "plain", "infer": infer},
                        "pools": {"train_seed": "unused"}})
items = [Instruction(f"question number {i}, please answer") for i in range(n)]
student_answers(SimpleNamespace(cfg=cfg, progress=False), model, items, out)
print("done", flush=True)
"""


def _ctx(model: Path, backend: str = "transformers", **infer) -> SimpleNamespace:
    opts = {"backend": backend, "batch_size": 2, "chunk_size": 3, "max_new_tokens": 24, "cpu_threads": 1, **infer}
    cfg = config_from_dict({"student": {"model": str(model), "prompt_format": "plain", "infer": opts},
                            "pools": {"train_seed": "unused"}})
    return SimpleNamespace(cfg=cfg, progress=False)


def _items(n: int) -> list[Instruction]:
    return [Instruction(f"question number {i}, please answer") for i in range(n)]


def _kill_after(args: list[str], out: Path, rows: int, env: dict[str, str]) -> int:
    """Run the driver, SIGKILL it once `out` holds `rows` rows; returns how many rows the kill left."""
    p = subprocess.Popen([sys.executable, "-c", DRIVER, *args], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out.exists() and len(out.read_bytes().splitlines()) >= rows):
        assert p.poll() is None, f"the driver ended before the kill point: {p.stderr.read() if p.stderr else ''}"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    return len(out.read_bytes().splitlines())


@pytest.mark.slow
def test_killed_mid_inference_the_restart_answers_only_the_rest(tmp_path, facts_student) -> None:
    n = 60
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "answers.jsonl"
    left = _kill_after([str(facts_student), str(out), str(n), "transformers"], out, 8, env)
    assert 8 <= left < n
    with out.open("ab") as f:  # as if the kill had cut a line in half
        f.write(b'{"id": "torn-by-the-kill", "ans')
    kept = {r["id"] for r in read_jsonl_prefix(out)}
    restart = subprocess.run([sys.executable, "-c", DRIVER, str(facts_student), str(out), str(n), "transformers"],
                             env=env, capture_output=True, text=True, timeout=300)
    assert restart.returncode == 0, restart.stderr[-2000:]
    rows = read_jsonl(out)  # strict: the torn fragment was cut off, not left in the middle
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == n  # each answer once
    assert len(rows) - len(kept) == n - len(kept)  # the restart generated only the missing ones
    reference = student_answers(_ctx(facts_student), facts_student, _items(n), tmp_path / "ref.jsonl")
    assert {r["id"]: r["answer"] for r in rows} == reference  # greedy: the same answers as an uninterrupted run


def read_jsonl_prefix(path: Path) -> list[dict]:
    """The complete rows of an append-only file (a torn last line dropped)."""
    from lion.records import read_jsonl_tolerant

    return read_jsonl_tolerant(path)


@pytest.fixture
def fake_vllm_env(monkeypatch, tmp_path):
    record = tmp_path / "vllm_calls.jsonl"
    monkeypatch.setenv("FAKE_VLLM_RECORD", str(record))
    monkeypatch.setenv("PYTHONPATH", str(FAKE_DIR) + os.pathsep + str(ROOT))
    monkeypatch.syspath_prepend(str(FAKE_DIR))
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)

    def calls() -> list[dict]:
        return [json.loads(x) for x in record.read_text().splitlines()] if record.exists() else []

    yield calls
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[name]


def test_vllm_answers_come_per_chunk_from_one_engine_and_from_data_parallel_engines(tmp_path, tiny_char_base,
                                                                                   fake_vllm_env, monkeypatch) -> None:
    from lion.student.data import format_prompt
    from lion.student.infer import generate

    prompts = [format_prompt(f"q{i}") for i in range(7)]
    seen: list[tuple[int, int]] = []  # (prompt index, generate calls recorded when its answer arrived)
    out = generate(tiny_char_base, prompts, InferConfig(backend="vllm", chunk_size=3), progress=False,
                   on_answer=lambda i, a: seen.append((i, len(fake_vllm_env()))))
    gens = [c["n"] for c in fake_vllm_env() if c["event"] == "generate"]
    assert gens == [3, 3, 1]
    # the answers of chunk k were handed over before chunk k+1 was generated (calls: LLM, then one per chunk)
    assert [calls for _, calls in seen] == [2, 2, 2, 3, 3, 3, 4]
    assert sorted(i for i, _ in seen) == list(range(7)) and all(isinstance(t, str) for t in out)

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    got: dict[int, str] = {}
    out2 = generate(tiny_char_base, prompts, InferConfig(backend="vllm", data_parallel=2, chunk_size=2),
                    progress=False, on_answer=lambda i, a: got.__setitem__(i, a.text))
    assert out2 == out and got == dict(enumerate(out))
    dp = [c["n"] for c in fake_vllm_env() if c["event"] == "generate"][3:]
    assert sorted(dp) == [1, 2, 2, 2]  # 4 + 3 prompts dealt to two engines, 2 per call


def test_a_prompt_longer_than_the_context_is_skipped_and_recorded(tmp_path, facts_student) -> None:
    """The student's context (max_position_embeddings 2048 for the tiny model): a 5000-character prompt is not
    generated (no crash, no silent truncation); the others are answered as without it; the skip is recorded."""
    from lion.prompts import load_template
    from lion.selectors import RefereeSelector
    from lion.student.data import format_prompt
    from lion.student.infer import generate

    cfg = InferConfig(backend="transformers", max_new_tokens=24, batch_size=4)
    short = [format_prompt(q, fmt="plain") for q in ("Color of the sky?", "Two plus two?")]
    huge = format_prompt("x" * 5000, fmt="plain")
    skipped: dict[int, str] = {}
    out = generate(facts_student, [short[0], huge, short[1]], cfg, progress=False, on_skip=skipped.__setitem__)
    assert out[1] is None and list(skipped) == [1]
    assert "exceeds the student's context of 2048 tokens" in skipped[1]
    assert [out[0], out[2]] == generate(facts_student, short, cfg, progress=False)

    items = [Instruction("Color of the sky?"), Instruction("x" * 5000)]
    path = tmp_path / "answers.jsonl"
    ans = student_answers(_ctx(facts_student), facts_student, items, path)
    assert ans[items[1].id] is None and isinstance(ans[items[0].id], str)
    row = next(r for r in read_jsonl(path) if r["id"] == items[1].id)
    assert row["answer"] is None and "exceeds" in row["skipped"]
    assert student_answers(_ctx(facts_student), facts_student, items, path) == ans  # recorded: not retried
    # discrimination: a skipped prompt is excluded with its reason, and the referee is not asked about it
    ctx = SimpleNamespace(cfg=_ctx(facts_student).cfg, gateway=_NoCalls(), template=lambda n: load_template(n, None))
    sel = RefereeSelector().select(ctx, 1, [items[1]], {items[1].id: "teacher answer"}, ans)
    (row,) = sel.rows
    assert row.label == "excluded" and "longer than its context" in (row.reason or "") and sel.judged == []


class _NoCalls:
    """A gateway that fails the test if any call is made through it."""

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        raise AssertionError(f"gateway.{name} used for a prompt the student skipped")
