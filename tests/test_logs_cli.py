"""Logging (lion.* loggers, the run's log file, heartbeats with progress bars off), the `lion` command and
`lion status`.

    python -m pytest -q tests/test_logs_cli.py
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lion.logs import Heartbeat, heartbeat, setup_logging

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _reset_logging():
    yield
    setup_logging("info", None, heartbeat_s=60.0, progress=True)


def test_heartbeat_line_has_done_total_rate_spend_eta() -> None:
    hb = Heartbeat("teacher/imitation", 200, every_s=1.0, done=20, spend=lambda: 1.23456)
    hb._t0 -= 10.0  # ten seconds in, 30 done since start
    hb.update(30)
    line = hb.line()
    assert line.startswith("heartbeat teacher/imitation: 50/200 (25%), 3.00/s, $1.2346, ETA 50s")


def test_heartbeat_beats_while_the_step_is_stuck(tmp_path: Path, caplog) -> None:
    setup_logging("info", tmp_path / "lion.log", heartbeat_s=0.05, progress=False)
    with heartbeat("stuck step", 10) as hb:
        hb.update(3)
        time.sleep(0.3)  # no progress at all for a while: the heartbeat still shows up
    text = (tmp_path / "lion.log").read_text()
    beats = [x for x in text.splitlines() if "heartbeat stuck step: 3/10 (30%)" in x]
    assert len(beats) >= 2 and " INFO lion.heartbeat: " in beats[0]
    setup_logging("info", tmp_path / "lion.log", heartbeat_s=0.05, progress=True)  # bars on: log file only (DEBUG)
    with heartbeat("bars on", 4):
        time.sleep(0.2)
    assert re.search(r"DEBUG lion.heartbeat: heartbeat bars on: 0/4", (tmp_path / "lion.log").read_text())
    setup_logging("info", None, heartbeat_s=0, progress=False)
    with heartbeat("off", 1) as hb:
        assert type(hb).__name__ == "_NoBeat"


def test_gateway_batch_beats_with_progress_off(tmp_path: Path, sim_server, sim_llm) -> None:
    from lion.sim.server import make_responder
    from lion.teachers.gateway import Gateway

    setup_logging("info", tmp_path / "lion.log", heartbeat_s=0.05, progress=False)
    server = sim_server(make_responder("echo", {}), latency_ms=40)
    llm = sim_llm(server.base_url, max_in_flight=2)
    with Gateway(llm, tmp_path, progress=False) as gw:
        res = gw.chat_many("teacher", "imitation", [[{"role": "user", "content": f"q{i}"}] for i in range(12)])
    assert all(r.ok for r in res)
    beats = [x for x in (tmp_path / "lion.log").read_text().splitlines() if "heartbeat teacher/imitation" in x]
    assert beats and re.search(r": \d+/12 \(\d+%\), [\d.]+ calls/s, \$0\.0000", beats[0]), beats


def test_log_level_flag_and_log_file_of_a_phase(tmp_path: Path, finished_run: Path) -> None:
    import argparse

    from lion.config import add_config_args

    p = argparse.ArgumentParser()
    add_config_args(p)
    args = p.parse_args(["--config", "c.yaml", "--log-level", "DEBUG", "--set", "seed=1"])
    assert args.overrides == ["log.level=debug", "seed=1"]
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    cfg = run / "config.yaml"
    text = cfg.read_text().replace(str(finished_run), str(run))
    cfg.write_text(text)
    # a finished phase re-run: replays, prints its one-line summary on stdout, logs to RUN/lion.log
    out = subprocess.run([sys.executable, "-m", "lion.discrimination", "--config", str(cfg), "--round", "1",
                          "--no-progress", "--log-level", "debug"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(r"round 1 discrimination: \d+ hard, \d+ easy, \d+ excluded \(hard ratio [\d.]+\)"
                        r"(; \d+ student answers cut at max_new_tokens \((kept|excluded)\))?\n", out.stdout)
    log = (run / "lion.log").read_text()
    assert "INFO lion.run: round 1: imitation" in log  # the loop's own lines from the fixture's run, kept (appended)


def test_setup_logging_does_not_stack_handlers(tmp_path: Path) -> None:
    setup_logging("warning", tmp_path / "a.log")
    setup_logging("warning", tmp_path / "b.log")
    logging.getLogger("lion.test").warning("once")
    assert "once" not in (tmp_path / "a.log").read_text() and (tmp_path / "b.log").read_text().count("once") == 1


# ------------------------------------------------------------------------------------------------ the lion command


def _lion(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from lion.cli import main; main()", *args],
                          capture_output=True, text=True, cwd=ROOT)


def test_console_script_is_declared_and_lists_the_subcommands() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^\[project\.scripts\]\nlion = "lion\.cli:main"$', pyproject, re.M)
    p = _lion("--help")
    assert p.returncode == 0
    for sub in ("run", "imitation", "discrimination", "generation", "evaluate", "report", "export", "plan", "status"):
        assert re.search(rf"^  {sub} +\S", p.stdout, re.M), sub
    bad = _lion("frobnicate")
    assert bad.returncode == 2 and "unknown command 'frobnicate'" in bad.stderr


def test_installed_console_script_runs() -> None:
    script = Path(sys.executable).parent / "lion"
    if not script.exists():
        pytest.skip(f"{script}: the console script is not installed in this environment (pip install -e . does it)")
    p = subprocess.run([str(script), "--help"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0 and "status" in p.stdout and "export" in p.stdout


def test_subcommands_are_the_modules(tmp_path: Path) -> None:
    p = _lion("run", "--config", str(tmp_path / "missing.yaml"))
    assert p.returncode == 2 and p.stderr.strip() == f"error: config file {tmp_path / 'missing.yaml'} does not exist"
    p = _lion("config", "--reference")
    assert p.returncode == 0 and p.stdout.startswith("# Config reference")
    import importlib.util

    plan = _lion("plan", "--help")
    if importlib.util.find_spec("lion.plan") is None:
        assert plan.returncode == 2 and "lion plan is not available yet" in plan.stderr
    else:
        assert plan.returncode == 0


def test_lion_status_on_a_finished_run(finished_run: Path) -> None:
    p = _lion("status", str(finished_run))
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert re.match(rf"{re.escape(str(finished_run))}: 1 of 1 rounds completed \(\+ final imitation\)", lines[0])
    assert lines[0].endswith("; finished")
    assert "round  1: imitation done, discrimination done, generation done" in p.stdout
    assert re.search(r"round  2: final imitation done", p.stdout) and "in flight" not in p.stdout
    usage = json.loads((finished_run / "usage.json").read_text())["total"]
    assert f"spend: ${usage['usd']:.4f}" in p.stdout and f"{usage['calls']} paid calls" in p.stdout
    assert "last log line (" in p.stdout
    js = json.loads(_lion("status", str(finished_run), "--json").stdout)
    assert js["spend"]["calls"] == usage["calls"] and js["round_status"][0]["done"].keys() == {
        "imitation", "discrimination", "generation"} and js["finished"] is True


def test_lion_status_shows_what_is_in_flight(finished_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    r1 = run / "round_01"
    (r1 / "discrimination.done").unlink()
    (r1 / "generation.done").unlink()
    answers = (r1 / "student_answers.jsonl").read_text().splitlines(keepends=True)
    (r1 / "student_answers.jsonl").write_text("".join(answers[:4]))
    shutil.rmtree(run / "round_02")
    p = _lion("status", str(run))
    assert p.returncode == 0, p.stderr
    assert "round  1: imitation done, discrimination -, generation -" in p.stdout
    assert not p.stdout.splitlines()[0].endswith("; finished")
    assert re.search(r"in flight: discrimination: teacher answers 10/10, student answers 4/10", p.stdout), p.stdout


def test_lion_status_of_a_non_run(tmp_path: Path) -> None:
    p = _lion("status", str(tmp_path))
    assert p.returncode == 2 and "state.json: missing" in p.stderr and "Traceback" not in p.stderr
