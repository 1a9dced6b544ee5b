"""The run report builds for a 2-round run directory; its HTML is self-contained and its plots are real images.

The run directory here is FABRICATED TEST DATA (written by `fake_run` below in the documented layout,
docs/run-dir.md), so the report can be tested without running the loop.
"""

from __future__ import annotations

import base64
import io
import random
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lion.records import instruction_id, write_json, write_jsonl
from lion.report import build_figures, build_report, find_lineages, load_run, main

WORDS = ["apple", "river", "stone", "cloud", "tiger", "maple", "lemon", "piano", "delta", "ember", "frost", "grape"]


def _inst(text: str, **kw: object) -> dict:
    return {"id": instruction_id(text), "instruction": text, "input": "", **kw}


def fake_run(root: Path, rounds: int = 2) -> Path:
    """Write a plausible `rounds`-round run directory (test data) and return it."""
    rng = random.Random(0)
    run = root / "run"
    run.mkdir()
    (run / "config.yaml").write_text(
        "student: {model: tiny, mode: full}\nllm: {teacher: {model: sim}}\n"
        "discrimination: {tau: 1.0}\nsim: {enabled: true}\n"
    )
    write_json(run / "state.json", {"rounds_completed": rounds})
    usage_by = []
    cache = [_inst(f"Reverse the word '{w}'.", meta={"family": "reverse"}) for w in WORDS]
    cache += [_inst(f"Add {a} and {b}.", meta={"family": "add"}) for a, b in [(12, 34), (56, 7), (81, 19), (40, 44)]]
    for r in range(1, rounds + 1):
        d = run / f"round_{r:02d}"
        d.mkdir()
        write_jsonl(d / "cache_pool.jsonl", cache)
        split, answers, judgements = [], [], []
        for row in cache:
            hard_family = row.get("meta", {}).get("family") == "add" or row.get("kind") == "hard"
            t = 9.0
            s = float(rng.choice([2, 3, 4])) if hard_family else float(rng.choice([7, 8, 9]) - (2 - r))
            ok = rng.random() > 0.05
            gap = t - s if ok else None
            label = "excluded" if not ok else ("hard" if gap >= 1.0 else "easy")
            split.append(
                {
                    "id": row["id"],
                    "instruction": row["instruction"],
                    "teacher_score": t if ok else None,
                    "student_score": s if ok else None,
                    "gap": gap,
                    "label": label,
                    "meta": row.get("meta", {}),
                }
            )
            answers.append({"id": row["id"], "answer": "77" if hard_family else row["instruction"][-7:-2][::-1]})
            for order in ("ts", "st"):
                judgements.append(
                    {
                        "id": row["id"],
                        "order": order,
                        "raw": f"ok\nSCORES: A={int(t)}, B={int(s)}",
                        "teacher_score": t,
                        "student_score": s,
                        "ok": ok,
                        "error": None if ok else "parse",
                        "attempts": 1 if ok else 3,
                    }
                )
        write_jsonl(d / "split.jsonl", split)
        write_jsonl(d / "student_answers.jsonl", answers)
        write_jsonl(d / "judgements.jsonl", judgements)
        hard = [x for x in split if x["label"] == "hard"]
        easy = [x for x in split if x["label"] == "easy"]
        generated = []
        for i, h in enumerate(hard):
            for j in range(2):
                generated.append(
                    _inst(
                        f"Add {10 + i * 7 + j + r * 100} and {j + 3}.",
                        round=r,
                        kind="hard",
                        parent=h["id"],
                        meta={"family": "add"},
                    )
                )
        for i, e in enumerate(easy[:3]):
            generated.append(
                _inst(
                    f"Uppercase the word '{WORDS[i]}{r}'.",
                    round=r,
                    kind="easy",
                    parent=e["id"],
                    meta={"family": "upper"},
                )
            )
        rejected = [
            {"text": "Add 12 and 34.", "kind": "hard", "parent": hard[0]["id"], "reason": "near_duplicate"},
            {"text": "", "kind": "easy", "parent": None, "reason": "parse"},
            {"text": "New prompt: add", "kind": "hard", "parent": None, "reason": "meta_word"},
        ][: r + 1]
        write_jsonl(d / "generated.jsonl", generated)
        write_jsonl(d / "rejected.jsonl", rejected)
        n_hard = sum(1 for g in generated if g["kind"] == "hard")
        ok_rows = [x for x in split if x["label"] != "excluded"]
        usage_by = [
            {
                "role": "teacher",
                "model": "sim",
                "phase": "imitation",
                "calls": 40 * r,
                "cached": 10,
                "tokens_in": 900 * r,
                "tokens_out": 300 * r,
                "usd": 0.002 * r,
            },
            {
                "role": "referee",
                "model": "sim",
                "phase": "discrimination",
                "calls": 32 * r,
                "cached": 0,
                "tokens_in": 5000 * r,
                "tokens_out": 800 * r,
                "usd": 0.01 * r,
            },
            {
                "role": "generator",
                "model": "sim",
                "phase": "generation",
                "calls": 20 * r,
                "cached": 0,
                "tokens_in": 1500 * r,
                "tokens_out": 400 * r,
                "usd": 0.003 * r,
            },
            {
                "role": "judge",
                "model": "sim",
                "phase": "eval",
                "calls": 16 * r,
                "cached": 0,
                "tokens_in": 2000 * r,
                "tokens_out": 300 * r,
                "usd": 0.004 * r,
            },
        ]
        acc = {"reverse": 0.3 * r, "add": 0.05, "upper": 0.4 + 0.2 * r}
        metrics = {
            "round": r,
            "imitation": {"n_train": len(cache), "n_failed_answers": 0, "train": {"train_loss_last": 1.2 / r}},
            "discrimination": {
                "n": len(split),
                "hard": len(hard),
                "easy": len(easy),
                "excluded": len(split) - len(ok_rows),
                "hard_ratio": len(hard) / max(1, len(ok_rows)),
                "teacher_mean": sum(x["teacher_score"] for x in ok_rows) / len(ok_rows),
                "student_mean": sum(x["student_score"] for x in ok_rows) / len(ok_rows),
                "parse_failures": len(split) - len(ok_rows),
                "parse_failure_rate": (len(split) - len(ok_rows)) / len(split) / 2,
                "swap_flip_rate": 0.1 / r,
            },
            "generation": {
                "wanted": {"hard": n_hard, "easy": 3},
                "accepted": {"hard": n_hard, "easy": len(generated) - n_hard},
                "requests": len(generated) + len(rejected),
                "rejected": {x["reason"]: 1 for x in rejected},
                "stopped": "targets_met",
            },
            "usage": {"by": usage_by},
            "eval": {
                "questions": "oracle heldout",
                "overall": {
                    "n": 24,
                    "n_scored": 23,
                    "n_excluded": 1,
                    "relative": {"ref_first": 40.0 + 10 * r, "cand_first": 38.0 + 10 * r, "mean": 39.0 + 10 * r},
                    "candidate_mean": 3.0 + r,
                    "reference_mean": 9.0,
                    "win": r,
                    "tie": 2,
                    "loss": 20 - r,
                },
                "by_category": {f: {"relative": {"mean": 100 * a}} for f, a in acc.items()},
                "judge": {"parse_failures": 1, "swap_flip_rate": 0.05},
            },
            "oracle": {"accuracy": acc, "overall": sum(acc.values()) / 3},
        }
        write_json(d / "metrics.json", metrics)
        for p in ("imitation", "discrimination", "generation"):
            write_json(d / f"{p}.done", {})
        cache = cache + generated
    write_json(
        run / "usage.json",
        {
            "by": usage_by,
            "total": {
                "calls": sum(u["calls"] for u in usage_by),
                "cached": 10,
                "tokens_in": sum(u["tokens_in"] for u in usage_by),
                "tokens_out": sum(u["tokens_out"] for u in usage_by),
                "usd": sum(u["usd"] for u in usage_by),
            },
        },
    )
    return run


def _check_png(data: bytes) -> tuple[int, int]:
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.format == "PNG"
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    assert arr.shape[0] >= 100 and arr.shape[1] >= 200
    assert arr.std() > 5, "image is (nearly) uniform"
    # more than background + one colour: a real chart has axes, text and data in several colours
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 20
    return img.size


class _Images(HTMLParser):
    """Collects the attributes of every <img> tag of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs))


def test_report_builds_for_two_round_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """report.html/.txt for a 2-round run: per-round rows, every section, and one inline PNG chart per figure."""
    run = fake_run(tmp_path)
    assert main([str(run)]) == 0
    printed = capsys.readouterr().out
    html_path = run / "report.html"
    text = html_path.read_text(encoding="utf-8")
    assert (run / "report.txt").read_text().strip() in printed
    # the text summary has one row per round with the hard ratio and the evaluation figure
    assert re.search(r"^\s+1\s", printed, re.M) and re.search(r"^\s+2\s", printed, re.M)
    assert "relative score 59.00%" in printed  # round 2 eval mean, the latest
    # self-contained: nothing the page loads or links to lives outside it
    refs = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]+)['"]""", text)
    assert all(ref.startswith(("data:", "#")) for ref in refs), [ref[:60] for ref in refs]
    # one <img> per figure the report builds, in order: hard ratio, means, gap histogram, referee health,
    # generated, rejected, tokens, USD, eval trend, per category, oracle accuracy
    figures = [(title, png) for _, title, png in build_figures(load_run(run)) if png is not None]
    assert len(figures) == 11
    page = _Images()
    page.feed(text)
    assert [img.get("alt") for img in page.images] == [title for title, _ in figures]
    # each is an inline PNG: a data:image/png;base64 URI whose bytes are a PNG (magic bytes) of a real chart
    prefix = "data:image/png;base64,"
    for img in page.images:
        src = img.get("src") or ""
        assert src.startswith(prefix), f"{img.get('alt')!r}: not an inline PNG: {src[:60]!r}"
        data = base64.b64decode(src[len(prefix) :], validate=True)
        assert data.startswith(b"\x89PNG\r\n\x1a\n"), f"{img.get('alt')!r}: not PNG bytes"
        _check_png(data)
    for section in ("Discrimination", "Referee health", "Generation", "Spend", "Evaluation", "Example lineages"):
        assert section in text


def test_lineages_follow_seed_to_next_round(tmp_path: Path) -> None:
    run = load_run(fake_run(tmp_path))
    lins = find_lineages(run, k=2)
    assert lins
    lin = lins[0]
    assert lin.round == 1 and lin.seed["label"] == "hard"
    r1 = {g["id"]: g for g in (run.rounds[0].generated)}
    for child in lin.children:
        assert r1[child["id"]]["parent"] == lin.seed["id"]
        # the child was appended to the Cache Pool and judged in round 2
        assert child["next"] is not None and child["next"]["id"] == child["id"]
        assert child["answer"] is not None


def test_report_tolerates_a_run_in_progress(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "round_01").mkdir(parents=True)
    write_json(run / "round_01" / "imitation.done", {})
    path, summary = build_report(run)
    text = path.read_text()
    assert "no data yet" in text and "data:image/png" not in text
    assert "1 round directory" in summary


def test_report_errors_name_the_problem(tmp_path: Path) -> None:
    from lion.errors import LionError

    with pytest.raises(LionError, match="no such run directory"):
        load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LionError, match="no round_XX"):
        load_run(tmp_path / "empty")
    run = fake_run(tmp_path)
    (run / "round_02" / "metrics.json").write_text("{broken")
    with pytest.raises(LionError, match=r"round_02/metrics.json:1"):
        load_run(run)
