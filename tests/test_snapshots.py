"""Which model really answered (issue 22, item 5): the served snapshots in the run's records, `lion status`, the
report and the export's dataset card; and the warnings for models past or near their announced retirement.

    python -m pytest -q tests/test_snapshots.py

(The mid-run change itself, warn and stop, is tests/test_logprobs.py::test_a_snapshot_change_mid_run_is_...)
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from lion.records import read_jsonl

CFG = {"student": {"model": "tiny"}, "pools": {"train_seed": "x"}}


def test_every_answer_verdict_and_instruction_records_its_snapshot(finished_run: Path) -> None:
    answers = read_jsonl(finished_run / "teacher_answers.jsonl")
    assert answers and all(a["model"] == "scripted" for a in answers if a.get("source") != "seed")
    verdicts = read_jsonl(finished_run / "round_01" / "judgements.jsonl")
    assert verdicts and all(v["model"] == "scripted" for v in verdicts if v["raw"] is not None)
    generated = read_jsonl(finished_run / "round_01" / "generated.jsonl")
    assert generated and all(g["meta"]["model"] == "scripted" for g in generated)


def test_status_report_and_card_list_the_snapshots_per_role(finished_run: Path, tmp_path: Path) -> None:
    from lion.export import main as export_main
    from lion.report import load_run, text_summary
    from lion.status import format_status, run_status

    s = run_status(finished_run)
    assert set(s["snapshots"]) >= {"teacher", "referee", "generator"}
    assert list(s["snapshots"]["teacher"]["scripted"]["snapshots"]) == ["scripted"]
    text = format_status(s)
    assert "served snapshots (paid calls):" in text and "    teacher scripted: scripted (" in text
    assert "served snapshots" in text_summary(load_run(finished_run))
    assert export_main([str(finished_run), "--out", str(tmp_path / "x"), "--format", "alpaca"]) == 0
    card = (tmp_path / "x" / "README.md").read_text()
    assert "### Served snapshots" in card and "| teacher | scripted | scripted |" in card
    assert json.loads(json.dumps(s))  # --json stays serialisable


def test_retirement_warnings_past_near_and_far() -> None:
    from lion.retirements import load_retirements, retirement_warnings

    table = load_retirements()
    assert all(r["source"] and r["models"] for r in table)  # every date names where it was read
    models = {"llm.teacher.model": "gpt-3.5-turbo", "llm.referee.model": "openai/gpt-5.2-chat-latest",
              "llm.generator.model": "gpt-4.1-mini"}
    warns = retirement_warnings(models, today=dt.date(2026, 6, 1))
    assert len(warns) == 1 and warns[0].startswith("llm.referee.model: openai/gpt-5.2-chat-latest shuts down on "
                                                   "2026-08-10, in 70 days")
    assert "recommends gpt-5.5" in warns[0]
    later = retirement_warnings(models, today=dt.date(2026, 12, 1))
    assert any(w.startswith("llm.teacher.model: gpt-3.5-turbo was shut down on 2026-10-23") for w in later)
    assert not retirement_warnings(models, today=dt.date(2026, 1, 1))  # more than 90 days ahead: quiet


def test_plan_and_config_warn_about_a_retired_model(tmp_path: Path, capsys) -> None:
    import yaml

    from lion.config import config_from_dict
    from lion.config import main as config_main
    from lion.plan import make_plan

    data = {**CFG, "llm": {"teacher": {"model": "gpt-3.5-turbo"}, "default": {"model": "gpt-4.1-mini"}},
            "pools": {"train_seed": str(Path(__file__).resolve().parents[1] / "data" / "smoke_seed.jsonl"),
                      "limit": 4}, "rounds": 1, "run_dir": str(tmp_path / "run")}
    plan = make_plan(config_from_dict(data))
    assert any("llm.teacher.model: gpt-3.5-turbo was shut down on 2026-10-23" in w for w in plan.warnings) \
        or dt.date.today() < dt.date(2026, 7, 25)  # before then it is not near yet
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    assert config_main(["--config", str(tmp_path / "c.yaml")]) == 0
    err = capsys.readouterr().err
    assert ("warning: llm.teacher.model: gpt-3.5-turbo" in err) == (dt.date.today() >= dt.date(2026, 7, 25))
    # the offline world answers with its own model: nothing to warn about
    sim = config_from_dict({**data, "sim": {"enabled": True}})
    assert not any("shut down" in w for w in make_plan(sim).warnings)


def test_the_plan_counts_the_disk_the_teacher_logprobs_take(tmp_path: Path) -> None:
    from lion.config import config_from_dict
    from lion.plan import logprobs_bytes_per_token, make_plan

    data = {**CFG, "llm": {"default": {"model": "gpt-4.1-mini"}, "teacher": {"top_logprobs": 20}},
            "pools": {"train_seed": str(Path(__file__).resolve().parents[1] / "data" / "smoke_seed.jsonl"),
                      "limit": 4}, "rounds": 1, "run_dir": str(tmp_path / "run")}
    plan = make_plan(config_from_dict(data), gpu_gb=None)
    tokens = sum(s.tokens_out for s in plan.steps if s.role == "teacher")
    line = next(a for a in plan.assumptions if a.startswith("llm.teacher.top_logprobs 20"))
    assert f"~{2 * logprobs_bytes_per_token(20) * tokens / 1e9:,.2f} GB" in line
    assert logprobs_bytes_per_token(5) == 29.5 and logprobs_bytes_per_token(20) == 98.8
