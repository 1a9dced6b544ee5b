"""Mid-training checkpoints: a training interrupted and restarted ends with the same weights as one that never was.

    python -m pytest -q tests/test_student_resume.py

Equality is measured bitwise (torch.equal on every saved tensor, and the figures compared with ==): on CPU, with
one thread count, the Trainer's checkpoint restores the weights, the AdamW moments, the scheduler, the RNG states
and the data position exactly, so nothing is left to differ. The in-process tests crash the training by raising
from a Trainer callback at a chosen step (the checkpoint of that step is not written yet, as in a real crash);
the slow ones SIGKILL a real process, one process and under torchrun.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import student_fact_examples

from lion.config import LoraConfig, StudentConfig
from lion.layout import CHECKPOINT_DONE, training_checkpoints
from lion.student.train import train_student

ROOT = Path(__file__).resolve().parents[1]


class Crash(Exception):
    """Stands for the process dying mid-training."""


def crash_at(monkeypatch, step: int) -> None:
    """The next training raises Crash at the end of optimizer step `step` (before that step's checkpoint)."""
    import lion.student.train as T

    orig = T.meter_callback

    def wrapped(tally, ckpts, cfg):
        meter = orig(tally, ckpts, cfg)
        inner = meter.on_step_end

        def on_step_end(args, state, control, **kw):
            out = inner(args, state, control, **kw)
            if state.global_step == step:
                raise Crash(step)
            return out

        meter.on_step_end = on_step_end
        return meter

    monkeypatch.setattr(T, "meter_callback", wrapped)


def _cfg(base: Path, **kw) -> StudentConfig:
    opts = dict(model=str(base), lr=3e-3, per_device_batch_size=8, grad_accum=2, max_steps=30, warmup_ratio=0.1,
                max_length=64, logging_steps=4, lr_scheduler="cosine", save_steps=7, cpu_threads=1)
    opts.update(kw)
    return StudentConfig(**opts)


def tensors(path: Path) -> dict[str, object]:
    from safetensors.torch import load_file

    out: dict[str, object] = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update({f"{f.name}:{k}": v for k, v in load_file(str(f)).items()})
    assert out, f"no weights in {path}"
    return out


def assert_bitwise_equal(a: Path, b: Path) -> None:
    import torch

    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]  # type: ignore[arg-type]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


SAME = ("steps", "tokens", "supervised_tokens", "padded_tokens", "n_rows", "losses", "train_loss", "train_loss_last")


def complete_checkpoints(out: Path) -> list[str]:
    ck = training_checkpoints(out)
    return sorted(p.name for p in ck.glob("checkpoint-*") if (p / CHECKPOINT_DONE).is_file())


@pytest.mark.parametrize("mode", ["full", "lora", "lora-continue-packed"])
def test_crashed_then_resumed_training_equals_the_uninterrupted_one_bitwise(tmp_path, tiny_char_base, monkeypatch,
                                                                            mode) -> None:
    """Crashed at step 17 (last checkpoint: 14) and restarted, the training resumes at 14 and ends bitwise equal."""
    kw: dict = {"mode": "full"}
    if mode == "lora":
        kw = {"mode": "lora"}
    elif mode == "lora-continue-packed":
        kw = {"mode": "lora", "lora": LoraConfig(between_rounds="continue"), "packing": True, "pack_length": 128}
    cfg = _cfg(tiny_char_base, **kw)
    ex = student_fact_examples(10)  # 80 examples: several epochs in 30 steps, so the resume lands mid-epoch
    ref = train_student(cfg, ex, tiny_char_base, tmp_path / "ref", progress=False)
    assert ref.metrics["resumed_at"] == [] and not training_checkpoints(tmp_path / "ref").exists()

    crash_at(monkeypatch, 17)
    with pytest.raises(Crash):
        train_student(cfg, ex, tiny_char_base, tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()
    assert complete_checkpoints(tmp_path / "s") == ["checkpoint-14"]  # 7 was deleted once 14 was complete
    monkeypatch.undo()

    res = train_student(cfg, ex, tiny_char_base, tmp_path / "s", progress=False)
    assert res.metrics["resumed_at"] == [14]
    assert res.metrics["checkpoints"] == ref.metrics["checkpoints"] == 4  # at 7, 14, 21, 28 in both
    assert not training_checkpoints(tmp_path / "s").exists()  # removed once the student is saved
    assert_bitwise_equal(tmp_path / "ref", tmp_path / "s")
    for k in SAME:
        assert res.metrics[k] == ref.metrics[k], k
    assert len(res.metrics["losses"]) == len(ref.metrics["losses"]) and math_isfinite(res.metrics["train_loss"])


def math_isfinite(x: float) -> bool:
    import math

    return math.isfinite(x)


def test_a_cut_save_is_ignored_and_another_trainings_checkpoints_are_discarded(tmp_path, tiny_char_base,
                                                                               monkeypatch) -> None:
    cfg = _cfg(tiny_char_base, max_steps=20)
    ex = student_fact_examples(10)
    crash_at(monkeypatch, 16)
    with pytest.raises(Crash):
        train_student(cfg, ex, tiny_char_base, tmp_path / "s", progress=False)
    ck = training_checkpoints(tmp_path / "s")
    cut = ck / "checkpoint-16"  # a save the crash interrupted: files, but no completion marker
    cut.mkdir()
    (cut / "model.safetensors").write_bytes(b"half a file")
    monkeypatch.undo()
    crash_at(monkeypatch, 18)
    with pytest.raises(Crash):
        train_student(cfg, ex, tiny_char_base, tmp_path / "s", progress=False)  # resumed from 14, not from 16
    assert not cut.exists() and complete_checkpoints(tmp_path / "s") == ["checkpoint-14"]
    monkeypatch.undo()

    # other examples: these checkpoints belong to another training and are not resumed from
    other = train_student(cfg, student_fact_examples(11), tiny_char_base, tmp_path / "s", progress=False)
    assert other.metrics["resumed_at"] == [] and other.metrics["steps"] == 20


def test_time_based_checkpoints_keep_the_newest_complete_ones(tmp_path, tiny_char_base, monkeypatch) -> None:
    """save_steps 0: a checkpoint after each save_minutes of training; save_total_limit of them are kept."""
    cfg = _cfg(tiny_char_base, save_steps=0, save_minutes=1e-6, save_total_limit=2, max_steps=12)
    crash_at(monkeypatch, 10)
    with pytest.raises(Crash):
        train_student(cfg, student_fact_examples(10), tiny_char_base, tmp_path / "s", progress=False)
    kept = complete_checkpoints(tmp_path / "s")
    assert kept == ["checkpoint-8", "checkpoint-9"]  # a save after every step, the two newest kept
    monkeypatch.undo()
    res = train_student(cfg, student_fact_examples(10), tiny_char_base, tmp_path / "s", progress=False)
    assert res.metrics["resumed_at"] == [9] and res.metrics["steps"] == 12
    # no checkpoints at all: nothing to resume from, nothing written
    none = train_student(_cfg(tiny_char_base, save_steps=0, save_minutes=0, max_steps=3), student_fact_examples(2),
                         tiny_char_base, tmp_path / "n", progress=False)
    assert none.metrics["steps"] == 3 and not training_checkpoints(tmp_path / "n").exists()


def test_a_saved_student_is_returned_not_trained_again(tmp_path, tiny_char_base) -> None:
    """Killed after the student was saved but before imitation noted it: the restart does not train again."""
    cfg = _cfg(tiny_char_base, max_steps=5)
    first = train_student(cfg, student_fact_examples(2), tiny_char_base, tmp_path / "s", progress=False)
    stamp = (tmp_path / "s" / "model.safetensors").stat().st_mtime_ns
    again = train_student(cfg, student_fact_examples(2), tiny_char_base, tmp_path / "s", progress=False)
    assert again.metrics == first.metrics
    assert (tmp_path / "s" / "model.safetensors").stat().st_mtime_ns == stamp
    changed = train_student(_cfg(tiny_char_base, max_steps=6), student_fact_examples(2), tiny_char_base,
                            tmp_path / "s", progress=False)
    assert changed.metrics["steps"] == 6  # another training: trained and saved over it


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, "the training ended before the kill point"
        assert time.monotonic() < deadline, "the kill point was never reached"
        time.sleep(0.02)


@pytest.mark.slow
def test_sigkilled_training_process_resumes_bitwise_equal(tmp_path, tiny_char_base) -> None:
    """`python -m lion.student.train` SIGKILLed after its second checkpoint; the restart ends bitwise equal."""
    student = dict(model=str(tiny_char_base), lr=3e-3, per_device_batch_size=8, grad_accum=1, max_steps=120,
                   warmup_ratio=0.1, max_length=64, logging_steps=10, save_steps=25, cpu_threads=1)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"student": student, "pools": {"train_seed": "unused"}}))
    rows = student_fact_examples(20)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cmd = [sys.executable, "-m", "lion.student.train", "--config", str(tmp_path / "c.yaml"), "--data",
           str(tmp_path / "d.jsonl"), "--init-from", str(tiny_char_base), "--out", str(tmp_path / "s")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: "checkpoint-50" in complete_checkpoints(tmp_path / "s"), p)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not (tmp_path / "s").exists()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    resumed = json.loads(r.stdout.strip().splitlines()[-1])
    assert resumed["resumed_at"] and resumed["resumed_at"][0] >= 50
    ref = train_student(StudentConfig(**student), rows, tiny_char_base, tmp_path / "ref", progress=False)
    assert_bitwise_equal(tmp_path / "ref", tmp_path / "s")
    assert resumed["train_loss"] == ref.metrics["train_loss"]


TORCHRUN_CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from conftest import student_fact_examples
from lion.config import StudentConfig
from lion.lock import RunLock
from lion.student.train import train_student
RunLock(sys.argv[3]).acquire()   # as lion.run holds it: the torchrun launcher is handed the lock
by_time = len(sys.argv) > 5 and sys.argv[5] == "by-time"  # checkpoints by the clock: rank 0 decides for both
cfg = StudentConfig(model=sys.argv[1], num_gpus=2, lr=3e-3, per_device_batch_size=8, grad_accum=1, max_steps=60,
                    warmup_ratio=0.0, max_length=64, logging_steps=5, save_steps=0 if by_time else 10,
                    save_minutes=1e-4, cpu_threads=1)
res = train_student(cfg, student_fact_examples(10), sys.argv[1], Path(sys.argv[2]), progress=False)
print("checkpoints", res.metrics["checkpoints"], flush=True)
print("resumed_at", res.metrics["resumed_at"], flush=True)
"""


@pytest.mark.slow
def test_torchrun_training_killed_with_its_parent_resumes_bitwise_equal(tmp_path, tiny_char_base) -> None:
    """Under torchrun (2 CPU processes, gloo): SIGKILL the parent mid-training; the launcher goes with it (and
    holds the run lock until its workers are gone); the restart resumes and ends equal to an uninterrupted run."""
    from lion.lock import is_locked

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-c", TORCHRUN_CHILD, str(tiny_char_base)]
    tests = str(Path(__file__).resolve().parent)
    run_dir = tmp_path / "run"
    p = subprocess.Popen([*args, str(tmp_path / "s"), str(run_dir), tests], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    _wait_for(lambda: "checkpoint-20" in complete_checkpoints(tmp_path / "s"), p)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    deadline = time.monotonic() + 60
    while is_locked(run_dir):  # the launcher and its workers stop, then the lock is free
        assert time.monotonic() < deadline, "the torchrun training outlived its killed parent"
        time.sleep(0.1)
    assert not (tmp_path / "s").exists()
    r = subprocess.run([*args, str(tmp_path / "s"), str(run_dir), tests], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    at = eval(r.stdout.strip().splitlines()[-1].split(" ", 1)[1])  # noqa: S307 - our own printed list
    assert at and at[0] >= 20
    # the uninterrupted run saves by time (a checkpoint whenever 6 ms of training passed, on both processes at
    # once: a save is collective); saving does not change what is trained
    ref = subprocess.run([*args, str(tmp_path / "ref"), str(tmp_path / "run_ref"), tests, "by-time"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    saved = next(x for x in ref.stdout.splitlines() if x.startswith("checkpoints "))
    assert int(saved.split()[1]) >= 2, saved  # the clock-based schedule did save, in step on both processes
    assert_bitwise_equal(tmp_path / "ref", tmp_path / "s")


def test_the_heartbeat_of_a_resumed_training_counts_from_the_resumed_step(tmp_path, tiny_char_base,
                                                                           monkeypatch) -> None:
    """A training resumed at step 14 of 30 beats "14/30 … 30/30", not "0/30 … 16/30" (its ETA rests on it)."""
    import lion.logs as L

    beats: list[object] = []
    real = L.heartbeat

    def recording(*a, **kw):
        hb = real(*a, **kw)
        beats.append(hb)
        return hb

    cfg = _cfg(tiny_char_base, mode="full")
    ex = student_fact_examples(10)
    crash_at(monkeypatch, 17)
    with pytest.raises(Crash):
        train_student(cfg, ex, tiny_char_base, tmp_path / "s", progress=False)
    monkeypatch.undo()
    monkeypatch.setattr(L, "heartbeat", recording)
    res = train_student(cfg, ex, tiny_char_base, tmp_path / "s", progress=False)
    assert res.metrics["resumed_at"] == [14]
    (hb,) = [b for b in beats if getattr(b, "desc", "") == "student training"]
    assert (hb._start_done, hb.done, hb.total) == (14, 30, 30)  # type: ignore[attr-defined]
