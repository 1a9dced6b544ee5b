"""The loop's per-round figures reach the trackers of `student.report_to`: TensorBoard (event files read back, the
Trainer's loss beside them) and wandb in offline mode (its run file read back); a resumed run sends no round twice.

    python -m pytest -q tests/test_trackers.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lion.config import config_from_dict
from lion.layout import RunLayout
from lion.trackers import Trackers, round_scalars


def _scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_round_scalars_flatten_the_round_figures() -> None:
    m = {"round": 2, "imitation": {"n_train": 5, "train": {"train_loss": 1.5}},
         "discrimination": {"hard_ratio": 0.4, "teacher_mean": 8.0, "student_mean": 5.5, "swap_flip_rate": 0.1,
                            "parse_failures": 3, "hard": 2, "easy": 3, "excluded": 0},
         "generation": {"accepted": {"hard": 4, "easy": 2}, "rejected": {"near_duplicate": 3, "too_short": 1},
                        "requests": {"hard": 5, "easy": 3}},
         "eval": {"overall": {"relative": {"mean": 0.87}, "n_scored": 10}, "oracle": {"overall": 0.5}},
         "oracle": {"overall": 0.75},
         "usage": {"total": {"usd": 1.25, "tokens_in": 100, "tokens_out": 50, "calls": 7, "cached": 1, "failed": 0}}}
    s = round_scalars(m)
    assert s["discrimination/hard_ratio"] == 0.4 and s["discrimination/swap_flip_rate"] == 0.1
    assert s["discrimination/parse_failures"] == 3 and s["generation/accepted_hard"] == 4
    assert s["generation/rejected"] == 4 and s["generation/rejected_near_duplicate"] == 3
    assert s["eval/relative_mean"] == 0.87 and s["eval/held_out_accuracy"] == 0.5 and s["oracle/pool_accuracy"] == 0.75
    assert s["spend/usd"] == 1.25 and s["imitation/train_loss"] == 1.5
    assert "discrimination/gap_mean" not in s  # a missing figure is left out, never drawn as 0


def test_tensorboard_receives_every_round_and_the_trainer_loss(finished_run: Path) -> None:
    scalars = _scalars(finished_run / "tensorboard")
    for r in (1, 2):
        m = json.loads((finished_run / f"round_{r:02d}" / "metrics.json").read_text())
        for tag, value in round_scalars(m).items():
            assert (r, pytest.approx(value, rel=1e-6)) in scalars[tag], tag
    assert [s for s, _ in scalars["discrimination/hard_ratio"]] == [1]  # round 2 is the final imitation: no split
    assert {"spend/usd", "generation/accepted_hard", "discrimination/swap_flip_rate",
            "discrimination/parse_failures", "imitation/train_loss"} <= set(scalars)
    for r in (1, 2):  # the Trainer's own loss curve, one folder per training
        train = _scalars(finished_run / "tensorboard" / f"train_round_{r:02d}")
        assert "train/loss" in train and train["train/loss"]
    assert not (finished_run / "round_01" / "student" / "_trainer").exists()


def test_a_resumed_run_sends_no_round_twice(finished_run: Path, tmp_path: Path) -> None:
    from lion.run import lion_loop

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    cfg = json.loads(json.dumps(__import__("yaml").safe_load((run / "config.yaml").read_text())))
    cfg["run_dir"] = str(run)
    before = _scalars(run / "tensorboard")["discrimination/hard_ratio"]
    lion_loop(config_from_dict(cfg), progress=False, echo=False)  # everything is done: replays, calls nothing
    assert _scalars(run / "tensorboard")["discrimination/hard_ratio"] == before
    assert json.loads((run / "trackers.json").read_text())["tensorboard"]["rounds"] == [1, 2]


# ------------------------------------------------------------------------------------------------ wandb offline


def _wandb_history(run_file: Path) -> list[dict]:
    """The history rows of a wandb run file (a LevelDB-style log of protobuf Records after a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending, records, block = 7, b"", [], 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if kind == 0:  # block padding
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind in (2, 3):
            pending = (pending if kind == 3 else b"") + chunk
        elif kind == 4:
            records.append(pending + chunk)
    rows = []
    for raw in records:
        rec = pb.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
    return rows


def test_wandb_offline_receives_the_rounds_and_resumes_the_same_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "lion-test")  # set here so that the test's end restores them
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "run"))
    cfg = config_from_dict({"run_dir": str(tmp_path / "run"), "student": {"model": "tiny", "report_to": ["wandb"]},
                            "pools": {"train_seed": "x"}, "log": {"wandb_project": "lion-test"}})
    layout = RunLayout(cfg.run_dir)
    figures = [{"round": r, "discrimination": {"hard_ratio": h, "swap_flip_rate": 0.1 * r},
                "usage": {"total": {"usd": 0.5 * r}}} for r, h in ((1, 0.6), (2, 0.4))]
    with Trackers(cfg, layout, ["wandb"]) as t:
        assert t.log_round(figures[0]) == ["wandb"]
    state = json.loads(layout.trackers.read_text())
    run_id = state["wandb"]["id"]
    with Trackers(cfg, layout, ["wandb"]) as t:  # a resumed run: same wandb run, round 1 not sent again
        assert t.log_round(figures[0]) == []
        assert t.log_round(figures[1]) == ["wandb"]
    runs = sorted(layout.wandb.glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(runs) == 2, list(layout.wandb.iterdir())
    history = [row for f in runs for row in _wandb_history(f)]
    assert [(h["round"], h["discrimination/hard_ratio"], h["spend/usd"]) for h in history] == [(1, 0.6, 0.5),
                                                                                              (2, 0.4, 1.0)]
    assert json.loads(layout.trackers.read_text())["wandb"] == {"id": run_id, "rounds": [1, 2]}


def test_unknown_tracker_is_a_config_error() -> None:
    from lion.errors import ConfigError

    with pytest.raises(ConfigError, match=r"student.report_to\[0\]: must be one of"):
        config_from_dict({"student": {"model": "tiny", "report_to": ["mlflow"]}, "pools": {"train_seed": "x"}})


def test_each_training_is_its_own_wandb_run_with_the_loss(tmp_path: Path, monkeypatch, tiny_char_base) -> None:
    from conftest import student_fact_examples

    from lion.config import StudentConfig
    from lion.student.train import train_student

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    import wandb

    wandb.teardown()  # wandb keeps its settings (WANDB_DIR) per process: start from this test's environment
    cfg = StudentConfig(model=str(tiny_char_base), max_steps=2, per_device_batch_size=4, grad_accum=1,
                        report_to=["wandb"], logging_steps=1)
    for r in (1, 2):
        train_student(cfg, student_fact_examples(1), tiny_char_base, tmp_path / f"round_0{r}" / "student",
                      progress=False)
    runs = sorted((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 2
    for f in runs:
        losses = [h["train/loss"] for h in _wandb_history(f) if "train/loss" in h]
        assert len(losses) == 2 and all(v > 0 for v in losses)
