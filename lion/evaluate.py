"""Evaluate a student against reference answers with an LLM judge: the paper's relative score.

    python -m lion.evaluate --config C --round R                      # round R's student
    python -m lion.evaluate --config C --model PATH [--name NAME]     # any local model
    python -m lion.evaluate --config C --base                         # the configured base model (baseline)
        [--questions ../shared/data/vicuna80/question.jsonl | oracle]
        [--answers ../shared/data/vicuna80/answer_gpt35.jsonl] [--max-questions N]

Questions: FastChat question.jsonl (the first turn; category from the row), our JSONL, or "oracle" (the offline
world's held-out synthetic questions; the default when sim.enabled). Reference answers: an answers file
(FastChat answer rows {"question_id", "text"}, or {"id", "answer"}), else the teacher through the gateway.
The judge (role llm.judge, template eval.judge_template) scores every (reference, candidate) pair in both
orders with the referee's parser, retries and failure rules (lion.referee.judge_pairs); a pair whose verdict
cannot be parsed is excluded and counted, never scored. Arithmetic: lion.evalscore.

Output directory: round_XX/eval/ (--round) or RUN/eval/<name>/ (--model):
    questions.jsonl           the evaluated questions {"id", "question_id", "category", "instruction", "input"}
    candidate_answers.jsonl   the candidate's answers {"id", "answer"}, appended per batch (resume point)
    answers.jsonl             {"id", "question_id", "category", "question", "candidate", "reference", "reference_source"}
    judgements.jsonl          per question and order {"id", "order": ref_first|cand_first, "raw", "candidate_score",
                              "reference_score", "ok", "error", "attempts"}
    table.jsonl, table.md     the per-question table (scores per order, means, win/tie/loss, flip, correctness)
    summary.json, summary.txt relative score per order and mean, overall and per category; W/T/L; judge health;
                              in the offline world also the oracle's exact accuracy per task family
Every LLM call goes through the gateway's cache, and the candidate's answers are saved per batch, so an
interrupted evaluation resumes where it stopped without paying for any call twice.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .config import LionConfig, add_config_args, load_config
from .errors import ConfigError, DataError, LionError
from .evalscore import ORDERS, QuestionScores, format_summary, summarize
from .prompts import load_template, teacher_request
from .records import append_jsonl, atomic_write_text, iter_jsonl, load_instructions, read_jsonl, write_json, write_jsonl

ORACLE = "oracle"
PHASE = "eval"


@dataclass
class EvalQuestion:
    id: str
    instruction: str
    input: str = ""
    category: str = ""
    question_id: str | None = None  # FastChat question_id (joins with FastChat answer files)
    truth: str | None = None  # offline world: the exact answer

    @property
    def text(self) -> str:
        return teacher_request(self.instruction, self.input)


# --------------------------------------------------------------------------------------------- inputs


def load_questions(
    spec: str, *, limit: int | None = None, oracle_per_family: int = 8, oracle_seed: int = 1234
) -> list[EvalQuestion]:
    """FastChat question.jsonl (first turn), our JSONL, or "oracle" (the offline world's held-out set)."""
    if spec == ORACLE:
        from .records import instruction_id
        from .sim.tasks import heldout_set

        rows = heldout_set(oracle_per_family, oracle_seed)
        qs = [
            EvalQuestion(
                id=instruction_id(str(r["instruction"])),
                instruction=str(r["instruction"]),
                category=str((r.get("meta") or {}).get("family", "")),  # type: ignore[union-attr]
                truth=str(r.get("answer")) if r.get("answer") is not None else None,
            )
            for r in rows
        ]
    else:
        insts, _ = load_instructions(spec)
        qs = []
        for i in insts:
            qid = i.meta.get("question_id")
            qs.append(
                EvalQuestion(
                    id=i.id,
                    instruction=i.instruction,
                    input=i.input,
                    category=str(i.meta.get("category") or i.meta.get("family") or ""),
                    question_id=None if qid is None else str(qid),
                )
            )
    return qs[:limit] if limit else qs


def load_answers(path: str | Path, questions: Sequence[EvalQuestion]) -> dict[str, str]:
    """Reference answers by question id, from a FastChat answer file or {"id", "answer"} rows."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: answers file not found")
    by_qid: dict[str, str] = {}
    by_id: dict[str, str] = {}
    for lineno, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object")
        text = row.get("text", row.get("answer"))
        if not isinstance(text, str):
            raise DataError(f"{path}:{lineno}: no answer text (expected a string under 'text' or 'answer')")
        if "question_id" in row:
            by_qid[str(row["question_id"])] = text
        elif "id" in row:
            by_id[str(row["id"])] = text
        else:
            raise DataError(f"{path}:{lineno}: no 'question_id' or 'id' to match the answer to a question")
    out: dict[str, str] = {}
    missing = []
    for q in questions:
        ans = by_qid.get(q.question_id) if q.question_id is not None else None
        if ans is None:
            ans = by_id.get(q.id)
        if ans is None:
            missing.append(q.question_id or q.id)
        else:
            out[q.id] = ans
    if missing:
        raise DataError(
            f"{path}: no answer for {len(missing)} of the {len(questions)} questions "
            f"(question ids {', '.join(map(str, missing[:5]))}{', ...' if len(missing) > 5 else ''}); "
            "is it the answers file of this question set?"
        )
    return out


def teacher_reference(cfg: LionConfig, gateway: Any, questions: Sequence[EvalQuestion]) -> dict[str, str | None]:
    """The teacher's answers through the gateway (same messages as imitation, so the cache is shared)."""
    from .teachers.base import ChatRequest

    system = load_template("teacher_system", cfg.prompts_dir).render()
    user = load_template("teacher", cfg.prompts_dir)
    reqs = [
        ChatRequest(
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user.render(request=q.text)}]
        )
        for q in questions
    ]
    results = gateway.chat_many("teacher", PHASE, reqs, desc="reference answers (teacher)")
    return {
        q.id: (r.text.strip() if r.ok and r.text and r.text.strip() else None)
        for q, r in zip(questions, results, strict=True)
    }


def candidate_answers(
    cfg: LionConfig, model: str | Path, questions: Sequence[EvalQuestion], out_dir: Path, *, progress: bool = True
) -> dict[str, str]:
    """The candidate model's answers, generated in batches and appended to candidate_answers.jsonl (resumable)."""
    path = out_dir / "candidate_answers.jsonl"
    done: dict[str, str] = {}
    if path.exists():
        for row in read_jsonl(path):
            done[str(row["id"])] = str(row["answer"])
    todo = [q for q in questions if q.id not in done]
    if todo:
        from .student.data import format_prompt
        from .student.infer import generate

        sc = cfg.student
        tokenizer = None
        if sc.prompt_format == "chat_template":
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(model))
        chunk = max(sc.infer.batch_size * 4, 32)
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            prompts = [format_prompt(q.instruction, q.input, fmt=sc.prompt_format, tokenizer=tokenizer) for q in part]
            outs = generate(str(model), prompts, sc.infer, progress=progress)
            for q, a in zip(part, outs, strict=True):
                append_jsonl(path, {"id": q.id, "answer": a})
                done[q.id] = a
    return {q.id: done[q.id] for q in questions}


# --------------------------------------------------------------------------------------------- evaluation


def _hub_id(ref: str) -> bool:
    """Looks like a hub model id ("org/name"), which transformers may load from its local cache."""
    return ref.count("/") == 1 and not ref.startswith((".", "/", "~")) and not ref.endswith("/")


def _fingerprint(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def evaluate(
    cfg: LionConfig,
    gateway: Any,
    model: str | Path,
    out_dir: Path,
    *,
    questions: str | None = None,
    answers: str | None = None,
    name: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate `model`; write everything under `out_dir`; return the summary (also summary.json)."""
    from .referee import judge_pairs

    ec = cfg.eval
    spec = questions or ec.questions or (ORACLE if cfg.sim.enabled else None)
    if not spec:
        raise ConfigError(
            "eval.questions: no question set (give --questions FILE, set eval.questions, or "
            '"oracle" in the offline world)'
        )
    answers = answers if answers is not None else ec.reference_answers
    if spec == ORACLE and not cfg.sim.enabled:
        raise ConfigError('eval.questions: "oracle" needs the offline world (sim.enabled: true)')
    model = Path(model)
    if not model.exists() and not _hub_id(str(model)):
        raise LionError(f"{model}: the model to evaluate does not exist")
    model_ref = str(model.resolve()) if model.exists() else str(model)
    qs = load_questions(
        spec, limit=ec.max_questions, oracle_per_family=ec.oracle_per_family, oracle_seed=ec.oracle_seed
    )
    fp = _fingerprint(
        {
            "model": model_ref,
            "questions": [q.id for q in qs],
            "answers": answers,
            "teacher": asdict(cfg.llm.teacher) if not answers else None,
            "judge": cfg.llm.judge.model,
            "template": ec.judge_template,
            "attempts": ec.judge_attempts,
            "infer": asdict(cfg.student.infer),
            "format": cfg.student.prompt_format,
        }
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_path = out_dir / "summary.json"
    if summary_path.exists():
        old = json.loads(summary_path.read_text(encoding="utf-8"))
        if old.get("fingerprint") == fp:
            return old
    meta_path = out_dir / "eval_meta.json"
    meta = {"model": model_ref, "infer": asdict(cfg.student.infer), "format": cfg.student.prompt_format}
    if meta_path.exists():
        old_meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if old_meta.get("model") != model_ref:
            raise LionError(
                f"{out_dir}: holds the evaluation of another model ({old_meta.get('model')}); "
                "choose another --name or remove that directory"
            )
        if {k: old_meta.get(k) for k in ("infer", "format")} != {k: meta[k] for k in ("infer", "format")}:
            # the saved answers came from other generation settings: they are not this evaluation's answers
            (out_dir / "candidate_answers.jsonl").unlink(missing_ok=True)
    write_json(meta_path, {**meta, "questions": spec, "answers": answers})
    write_jsonl(out_dir / "questions.jsonl", (asdict(q) for q in qs))

    # 1. the candidate answers (saved per batch), 2. the references, 3. the judge in both orders
    cand = candidate_answers(cfg, model, qs, out_dir, progress=progress)
    if answers:
        refs: dict[str, str | None] = dict(load_answers(answers, qs))
        ref_source = str(answers)
    else:
        refs = teacher_reference(cfg, gateway, qs)
        ref_source = f"teacher:{cfg.llm.teacher.model}"
    items = [(q.id, q.text, refs[q.id], cand[q.id]) for q in qs if refs[q.id] is not None]
    judged = judge_pairs(
        gateway,
        "judge",
        PHASE,
        items,
        load_template(ec.judge_template, cfg.prompts_dir),
        attempts=ec.judge_attempts,
        both_orders=True,
        desc=f"judge ({name or model.name})",
    )
    by_id = {j.id: j for j in judged}

    # answer "1" is the reference, "2" the candidate: order "12" shows the reference first
    order_name = {"12": "ref_first", "21": "cand_first"}
    rows: list[QuestionScores] = []
    judgement_rows: list[dict[str, Any]] = []
    table: list[dict[str, Any]] = []
    grade = None
    if spec == ORACLE:
        from .sim.tasks import grade
    for q in qs:
        scores: dict[str, tuple[float, float] | None] = {o: None for o in ORDERS}
        j = by_id.get(q.id)
        for o in j.orders if j else []:
            name_o = order_name.get(str(o.get("order")), str(o.get("order")))
            ok = bool(o.get("ok")) and o.get("score_1") is not None and o.get("score_2") is not None
            if ok:
                scores[name_o] = (float(o["score_2"]), float(o["score_1"]))
            judgement_rows.append(
                {
                    "id": q.id,
                    "order": name_o,
                    "raw": o.get("raw"),
                    "candidate_score": o.get("score_2"),
                    "reference_score": o.get("score_1"),
                    "ok": ok,
                    "error": o.get("error"),
                    "attempts": o.get("attempts"),
                }
            )
        qsc = QuestionScores(q.id, q.category, scores)
        if refs[q.id] is not None:  # a question with no reference answer was never judged: not a judge failure
            rows.append(qsc)
        m = qsc.mean()
        reason = None
        if refs[q.id] is None:
            reason = "no reference answer"
        elif not qsc.ok:
            errors = [str(o.get("error") or "") for o in (j.orders if j else [])]
            reason = (
                "judge call failed" if any(e.startswith("call failed") for e in errors) else "judge verdict unparseable"
            )
        trow: dict[str, Any] = {"id": q.id, "question_id": q.question_id, "category": q.category}
        for o in ORDERS:
            s = scores[o]
            trow[f"{o}_candidate"] = s[0] if s else None
            trow[f"{o}_reference"] = s[1] if s else None
        trow.update(
            {
                "candidate_mean": m[0] if m else None,
                "reference_mean": m[1] if m else None,
                "outcome": qsc.outcome(),
                "flipped": qsc.flipped(),
                "excluded": reason,
            }
        )
        if grade is not None:
            trow["correct"] = grade(q.instruction, cand[q.id])
            trow["reference_correct"] = grade(q.instruction, refs[q.id]) if refs[q.id] is not None else None
        table.append(trow)

    summary: dict[str, Any] = {
        "name": name or model.name,
        "model": str(model),
        "questions": str(spec),
        "n_questions": len(qs),
        "reference": ref_source,
        "judge_model": cfg.llm.judge.model,
        **summarize(rows),
    }
    summary["overall"]["n_no_reference"] = sum(1 for q in qs if refs[q.id] is None)
    summary["seen_in_training"] = seen_in_training(Path(cfg.run_dir), qs)
    if grade is not None:
        summary["oracle"] = oracle_accuracy(qs, table)
    summary["fingerprint"] = fp

    write_jsonl(
        out_dir / "answers.jsonl",
        (
            {
                "id": q.id,
                "question_id": q.question_id,
                "category": q.category,
                "question": q.text,
                "candidate": cand[q.id],
                "reference": refs[q.id],
                "reference_source": ref_source,
            }
            for q in qs
        ),
    )
    write_jsonl(out_dir / "judgements.jsonl", judgement_rows)
    write_jsonl(out_dir / "table.jsonl", table)
    atomic_write_text(out_dir / "table.md", table_markdown(qs, table))
    text = format_summary(summary, title=f"{summary['name']} vs {ref_source} on {spec} (judge {cfg.llm.judge.model})")
    if "oracle" in summary:
        o = summary["oracle"]
        text += "\noracle exact accuracy: " + ", ".join(f"{f} {a:.0%}" for f, a in o["accuracy"].items())
        text += (
            f"; overall {o['overall']:.1%} (reference answers {o['reference_overall']:.1%})"
            if o["overall"] is not None and o["reference_overall"] is not None
            else ""
        )
    if summary["seen_in_training"]:
        text += (
            f"\nwarning: {summary['seen_in_training']} of the {len(qs)} questions occur in a Train Pool of "
            "this run (the student was trained on them)"
        )
    atomic_write_text(out_dir / "summary.txt", text + "\n")
    write_json(summary_path, summary)  # last: its presence (with this fingerprint) marks the evaluation done
    return summary


def seen_in_training(run_dir: Path, qs: Sequence[EvalQuestion]) -> int:
    """How many evaluated questions occur (same content id) in any Train Pool of the run: a leak check."""
    ids = {q.id for q in qs}
    seen: set[str] = set()
    for pool in sorted(run_dir.glob("round_*/train_pool.jsonl")):
        seen |= {str(r.get("id")) for r in read_jsonl(pool)} & ids
    return len(seen)


def oracle_accuracy(qs: Sequence[EvalQuestion], table: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Exact accuracy per task family (grade() of the offline world), for the candidate and the reference."""
    per: dict[str, list[bool]] = {}
    ref: list[bool] = []
    for q, t in zip(qs, table, strict=True):
        if t.get("correct") is None:
            continue
        per.setdefault(q.category, []).append(bool(t["correct"]))
        if t.get("reference_correct") is not None:
            ref.append(bool(t["reference_correct"]))
    n = sum(len(v) for v in per.values())
    return {
        "accuracy": {f: sum(v) / len(v) for f, v in sorted(per.items())},
        "n": {f: len(v) for f, v in sorted(per.items())},
        "overall": sum(sum(v) for v in per.values()) / n if n else None,
        "reference_overall": sum(ref) / len(ref) if ref else None,
    }


def table_markdown(qs: Sequence[EvalQuestion], table: Sequence[dict[str, Any]]) -> str:
    def c(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:g}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    extra = "correct" in (table[0] if table else {})
    head = ["question", "category", "ref 1st: cand/ref", "cand 1st: cand/ref", "mean cand/ref", "outcome", "flip"]
    if extra:
        head.append("correct")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for q, t in zip(qs, table, strict=True):
        text = q.instruction if len(q.instruction) <= 70 else q.instruction[:69] + "…"
        cells = [
            text,
            q.category,
            f"{c(t['ref_first_candidate'])}/{c(t['ref_first_reference'])}",
            f"{c(t['cand_first_candidate'])}/{c(t['cand_first_reference'])}",
            f"{c(t['candidate_mean'])}/{c(t['reference_mean'])}",
            t["outcome"] or f"excluded ({t['excluded']})",
            c(t["flipped"]),
        ]
        if extra:
            cells.append(c(t.get("correct")))
        lines.append(
            "| "
            + " | ".join(c(x) if not isinstance(x, str) else x.replace("|", "\\|").replace("\n", " ") for x in cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


def evaluate_round(
    cfg: LionConfig, round_no: int, gateway: Any, student_path: str | Path, *, progress: bool = True
) -> dict[str, Any]:
    """The loop's per-round hook: evaluate round `round_no`'s student into round_XX/eval/; return the summary."""
    out = Path(cfg.run_dir) / f"round_{round_no:02d}" / "eval"
    summary = evaluate(cfg, gateway, student_path, out, name=f"round {round_no}", progress=progress)
    return {k: v for k, v in summary.items() if k != "fingerprint"}


# --------------------------------------------------------------------------------------------- CLI


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lion.evaluate",
        description="Relative score of a student vs reference answers, judged in both orders.",
    )
    add_config_args(p)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--round", "-r", type=int, help="evaluate this round's student (RUN/round_XX/student)")
    who.add_argument("--model", help="evaluate any local model directory (or a hub id in the local cache)")
    who.add_argument(
        "--base", action="store_true", help="evaluate the configured base model (student.model) as a baseline"
    )
    p.add_argument("--name", default=None, help="with --model: results go to RUN/eval/NAME (default: the dir name)")
    p.add_argument(
        "--questions", default=None, help="question file (FastChat or JSONL) or 'oracle' (default: eval.questions)"
    )
    p.add_argument(
        "--answers", default=None, help="reference answers file (default: eval.reference_answers, else the teacher)"
    )
    p.add_argument("--max-questions", type=int, default=None, help="evaluate only the first N questions")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    from .context import RunContext

    args = make_parser().parse_args(argv)
    overrides = list(args.overrides)
    if args.max_questions is not None:
        overrides.append(f"eval.max_questions={args.max_questions}")
    cfg = load_config(args.config, overrides)
    run = Path(cfg.run_dir)
    if args.round is not None:
        model = run / f"round_{args.round:02d}" / "student"
        if not model.is_dir():
            raise LionError(f"{model}: round {args.round}'s student does not exist (run its imitation first)")
        out = run / f"round_{args.round:02d}" / "eval"
        name = f"round {args.round}"
    elif args.model:
        model = Path(args.model)
        if not model.exists() and not _hub_id(args.model):
            raise LionError(f"--model {model}: no such model directory")
        name = args.name or (model.resolve().name if model.exists() else args.model.replace("/", "--"))
        out = run / "eval" / name
    with RunContext(cfg, progress=args.progress) as ctx:
        if args.base:
            from .student import resolve_base_model

            model = Path(resolve_base_model(ctx.cfg.student, run))
            name = args.name or "base"
            out = run / "eval" / name
        summary = evaluate(
            ctx.cfg,
            ctx.gateway,
            model,
            out,
            questions=args.questions,
            answers=args.answers,
            name=name,
            progress=args.progress,
        )
        write_json(run / "usage.json", ctx.gateway.usage_summary())
    print((out / "summary.txt").read_text(encoding="utf-8"), end="")
    print(f"saved under {out}")
    return 0 if summary["overall"]["n_scored"] else 1


if __name__ == "__main__":
    from .errors import cli_main

    cli_main(main, sys.argv[1:])
