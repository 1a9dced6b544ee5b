"""Evaluate a student against reference answers with an LLM judge: the paper's relative score.

    python -m lion.evaluate --config C --round R                      # round R's student
    python -m lion.evaluate --config C --model PATH [--name NAME]     # any local model
    python -m lion.evaluate --config C --base                         # the configured base model (baseline)
        [--questions ../shared/data/vicuna80/question.jsonl | oracle]
        [--answers ../shared/data/vicuna80/answer_gpt35.jsonl] [--max-questions N]
    python -m lion.evaluate --reviews REVIEWS.jsonl [--answers REF.jsonl CAND.jsonl] [--questions Q.jsonl]
        [--format fastchat|lion]                                      # replay existing reviews: no model call

Questions: FastChat question.jsonl (the first turn; category from the row), our JSONL, or "oracle" (the offline
world's held-out synthetic questions; the default when sim.enabled). Reference answers: an answers file
(FastChat answer rows {"question_id", "text"}, or {"id", "answer"}), else the teacher's answers (lion.answers:
bought once, kept in the run's answer store).
The judge (role llm.judge) scores every (reference, candidate) pair in both orders with the referee's retries
and failure rules (lion.referee.judge_pairs), prompted with the template eval.judge_template or, when
eval.judge_prompts names a FastChat-style prompt.jsonl, with the prompt of each question's category (coding,
math, else general), and read in the verdict format that prompt declares (lion.verdicts); a pair whose verdict
cannot be parsed is excluded and counted, never scored. Arithmetic: lion.evalscore. Gates (lion.failures): judge
pairs whose call failed above llm.max_failure_rate, or whose every verdict was unreadable above
llm.max_unparsed_rate, stop the evaluation before its summary.json (exit status 4: not finished; the rest is written).

--reviews replays a file of judge reviews that already exist (FastChat's review files, or our judgements.jsonl)
through the verdict parser and recomputes the relative score from them, calling no model (lion.reviews).

Python: `evaluate(ctx, model, out)` inside a `RunContext`, in four steps: prepare (questions, fingerprint), answer
(candidate and reference), judge (both orders), tabulate, then write; `evaluate_round(ctx, r)` is the loop's hook.

Output directory (lion.layout.EvalPaths): round_XX/eval/ (--round) or RUN/eval/<name>/ (--model):
    questions.jsonl           the evaluated questions {"id", "question_id", "category", "instruction", "input"}
    candidate_answers.jsonl   the candidate's answers {"id", "answer"}, appended per batch (resume point)
    answers.jsonl             {"id", "question_id", "category", "question", "candidate", "reference", "reference_source"}
    judgements.jsonl          per question and order {"id", "order": ref_first|cand_first, "raw", "reference_score",
                              "candidate_score", "ok", "error", "attempts", "rejected", "prompt"}
    table.jsonl, table.md     the per-question table (scores per order, means, win/tie/loss, flip, correctness)
    summary.json, summary.txt relative score per order and mean, overall and per category; W/T/L; judge health;
                              in the offline world also the oracle's exact accuracy per task family
Every LLM call goes through the gateway's cache, and the candidate's answers are saved per batch, so an
interrupted evaluation resumes where it stopped without paying for any call twice.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .answers import read_truncated, student_answers, teacher_answers
from .config import add_config_args, load_config
from .context import RunContext
from .errors import ConfigError, DataError, LionError
from .evalscore import ORDERS, QuestionScores, format_summary, summarize
from .failures import check_failures, check_unparsed
from .judge_prompts import JudgePrompts, TemplateJudge, load_judge_prompts
from .layout import EvalPaths, RoundPaths, RunLayout
from .prompts import Template
from .questions import ORACLE, EvalQuestion, load_questions  # noqa: F401 - also this module's interface
from .records import (
    atomic_write_text,
    iter_jsonl,
    read_json_or_empty,
    read_jsonl,
    write_json,
    write_jsonl,
)
from .referee import Pair, PairJudgement, judge_pairs
from .student.infer import inference_settings
from .verdicts import FORMATS
from .world import World, family_accuracy

PHASE = "eval"
JUDGE_CALL_FAILED = "judge call failed"  # why a question is excluded (table.jsonl "excluded")
JUDGE_UNPARSED = "judge verdict unparseable"


# --------------------------------------------------------------------------------------------- inputs


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


# --------------------------------------------------------------------------------------------- evaluation


def _hub_id(ref: str) -> bool:
    """Looks like a hub model id ("org/name"), which transformers may load from its local cache."""
    return ref.count("/") == 1 and not ref.startswith((".", "/", "~")) and not ref.endswith("/")


def _fingerprint(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class EvalPlan:
    """What one evaluation will do (from `prepare`): the model, the questions, the reference and where it writes."""

    model: Path
    model_ref: str  # the model as recorded (resolved path, or a hub id)
    name: str
    spec: str  # the question set as given (a file, or "oracle")
    questions: list[EvalQuestion]
    answers_file: str | None  # reference answers file; None: the teacher answers
    out: EvalPaths
    fingerprint: str
    finished: dict[str, Any] | None = None  # the saved summary, when this very evaluation is already done
    judge: Template | JudgePrompts | None = None  # the judge's template, or its FastChat prompt file
    phase: str = PHASE  # the ledger's phase of its calls ("control-eval" for the control student, lion.control)


@dataclass
class Scored:
    """The judged evaluation (from `tabulate`): per-question scores, judgement rows and the per-question table."""

    rows: list[QuestionScores]
    judgements: list[dict[str, Any]]
    table: list[dict[str, Any]]


def evaluate(
    ctx: RunContext,
    model: str | Path,
    out: EvalPaths,
    *,
    questions: str | None = None,
    answers: str | None = None,
    name: str = "",
    phase: str = PHASE,
) -> dict[str, Any]:
    """Evaluate `model`; write everything under `out`; return the summary (also out.summary). `phase`: the ledger
    phase its calls are booked under."""
    plan = prepare(ctx, model, out, questions=questions, answers=answers, name=name)
    plan.phase = phase
    if plan.finished is not None:
        return plan.finished
    cand, refs, ref_source = answer(ctx, plan)
    judged = judge(ctx, plan, cand, refs)
    scored = tabulate(ctx, plan, cand, refs, judged)
    return write(ctx, plan, cand, refs, ref_source, scored)


def prepare(
    ctx: RunContext, model: str | Path, out: EvalPaths, *, questions: str | None, answers: str | None, name: str
) -> EvalPlan:
    """Check the inputs, load the questions, fingerprint the evaluation; find it finished, or forget candidate
    answers that other generation settings produced."""
    cfg, ec = ctx.cfg, ctx.cfg.eval
    spec = questions or ec.questions or (ORACLE if ctx.world is not None else None)
    if not spec:
        raise ConfigError(
            "eval.questions: no question set (give --questions FILE, set eval.questions, or "
            '"oracle" in the offline world)'
        )
    answers = answers if answers is not None else ec.reference_answers
    model = Path(model)
    if not model.exists() and not _hub_id(str(model)):
        raise LionError(f"{model}: the model to evaluate does not exist")
    model_ref = str(model.resolve()) if model.exists() else str(model)
    qs = load_questions(spec, heldout=ctx.heldout() if spec == ORACLE else (), limit=ec.max_questions)
    judge_prompt, judge_fp = judge_prompts(ctx)
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
            **judge_fp,
        }
    )
    plan = EvalPlan(model, model_ref, name or model.name, spec, qs, answers, out, fp, judge=judge_prompt)
    out.dir.mkdir(parents=True, exist_ok=True)
    if out.summary.exists():
        old = json.loads(out.summary.read_text(encoding="utf-8"))
        if old.get("fingerprint") == fp:
            plan.finished = old
            return plan
    meta = {"model": model_ref, "infer": asdict(cfg.student.infer), "format": cfg.student.prompt_format}
    if out.meta.exists():
        old_meta = json.loads(out.meta.read_text(encoding="utf-8"))
        if old_meta.get("model") != model_ref:
            raise LionError(
                f"{out.dir}: holds the evaluation of another model ({old_meta.get('model')}); "
                "choose another --name or remove that directory"
            )
        if {k: old_meta.get(k) for k in ("infer", "format")} != {k: meta[k] for k in ("infer", "format")}:
            # the saved answers came from other generation settings: they are not this evaluation's answers
            out.candidate_answers.unlink(missing_ok=True)
    write_json(out.meta, {**meta, "questions": spec, "answers": answers})
    write_jsonl(out.questions, (asdict(q) for q in qs))
    return plan


def judge_prompts(ctx: RunContext) -> tuple[Template | JudgePrompts, dict[str, str]]:
    """The judge's prompt (eval.judge_prompts, else eval.judge_template), checked before anything is spent, and
    what of it enters the evaluation's fingerprint beyond the template name."""
    ec = ctx.cfg.eval
    if ec.judge_prompts:
        prompts = load_judge_prompts(ec.judge_prompts, "eval.judge_prompts")
        return prompts, {"judge_prompts": hashlib.sha256(prompts.path.read_bytes()).hexdigest()[:16]}
    tpl = ctx.template(ec.judge_template)
    TemplateJudge(tpl)  # checks its placeholders
    return tpl, ({"verdict_format": tpl.verdict_format} if tpl.verdict_format not in (None, "lion") else {})


def answer(ctx: RunContext, plan: EvalPlan) -> tuple[dict[str, str | None], dict[str, str | None], str]:
    """The candidate's answers (saved as they come), the reference answers and where the references came from."""
    cand = student_answers(ctx, plan.model, plan.questions, plan.out.candidate_answers, phase=plan.phase)
    if plan.answers_file:
        return cand, dict(load_answers(plan.answers_file, plan.questions)), str(plan.answers_file)
    return cand, teacher_answers(ctx, plan.questions, plan.phase), f"teacher:{ctx.cfg.llm.teacher.model}"


def judge(
    ctx: RunContext, plan: EvalPlan, cand: dict[str, str | None], refs: dict[str, str | None]
) -> dict[str, PairJudgement]:
    """The judge's verdicts in both orders for every question that has a reference answer."""
    ec = ctx.cfg.eval
    pairs = [
        Pair(q.id, q.text, ref, c, q.category)
        for q in plan.questions
        if (ref := refs[q.id]) is not None and (c := cand[q.id]) is not None
    ]
    judged = judge_pairs(
        ctx.gateway,
        "judge",
        plan.phase,
        pairs,
        plan.judge if plan.judge is not None else ctx.template(ec.judge_template),
        attempts=ec.judge_attempts,
        both_orders=True,
        desc=f"judge ({plan.name})",
    )
    return {j.id: j for j in judged}


def tabulate(
    ctx: RunContext,
    plan: EvalPlan,
    cand: dict[str, str | None],
    refs: dict[str, str | None],
    judged: dict[str, PairJudgement],
) -> Scored:
    """Per question: the scores in each order, their means, win/tie/loss, flip, why excluded, and (offline)
    whether the candidate and the reference are exactly right."""
    world = ctx.world if plan.spec == ORACLE else None
    out = Scored([], [], [])
    for q in plan.questions:
        j = judged.get(q.id)
        verdicts = j.verdicts if j else ()
        scores: dict[str, tuple[float, float] | None] = {o: None for o in ORDERS}
        for v in verdicts:
            if v.ok:
                scores[v.order] = (float(v.candidate_score), float(v.reference_score))  # type: ignore[arg-type]
            out.judgements.append(v.to_row(q.id))
        qsc = QuestionScores(q.id, q.category, scores)
        if refs[q.id] is not None and cand[q.id] is not None:  # never judged: not a judge failure
            out.rows.append(qsc)
        m = qsc.mean()
        reason = None
        if refs[q.id] is None:
            reason = "no reference answer"
        elif cand[q.id] is None:
            reason = "candidate skipped the prompt (longer than its context)"
        elif not qsc.ok:
            reason = JUDGE_CALL_FAILED if any(v.call_failed for v in verdicts) else JUDGE_UNPARSED
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
        if world is not None:
            ref = refs[q.id]
            trow["correct"] = world.grade(q.instruction, cand[q.id] or "")
            trow["reference_correct"] = world.grade(q.instruction, ref) if ref is not None else None
        out.table.append(trow)
    return out


def write(
    ctx: RunContext,
    plan: EvalPlan,
    cand: dict[str, str | None],
    refs: dict[str, str | None],
    ref_source: str,
    scored: Scored,
) -> dict[str, Any]:
    """Write answers, judgements, the table and the summary (last: it marks the evaluation done)."""
    qs, out, judge_model = plan.questions, plan.out, ctx.cfg.llm.judge.model
    summary: dict[str, Any] = {
        "name": plan.name,
        "model": str(plan.model),
        "questions": str(plan.spec),
        "n_questions": len(qs),
        "reference": ref_source,
        "judge_model": judge_model,
        "judge_prompt": ctx.cfg.eval.judge_prompts or ctx.cfg.eval.judge_template,
        **summarize(scored.rows),
    }
    summary["overall"]["n_no_reference"] = sum(1 for q in qs if refs[q.id] is None)
    summary["overall"]["n_candidate_skipped"] = sum(1 for q in qs if cand[q.id] is None)
    cut = read_truncated(plan.out.candidate_answers)  # cut at student.infer.max_new_tokens: judged as they are
    summary["overall"]["n_candidate_truncated"] = sum(1 for q in qs if q.id in cut)
    summary["student_infer"] = inference_settings(ctx.cfg.student.infer)  # how the candidate answered
    summary["seen_in_training"] = seen_in_training(ctx.run, qs)
    summary["pool_overlap"] = overlap = pool_overlap(ctx.run, qs)
    if plan.spec == ORACLE and overlap:
        raise LionError(
            f"{overlap} of the {len(qs)} held-out questions occur in a pool of {ctx.run.root}: the held-out set must "
            "be disjoint from every pool (drawn apart from the seeds, rejected by generation); this is a bug"
        )
    if plan.spec == ORACLE and ctx.world is not None:
        summary["oracle"] = oracle_accuracy(ctx.world, qs, cand, refs)
    summary["fingerprint"] = plan.fingerprint

    write_jsonl(
        out.answers,
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
    write_jsonl(out.judgements, scored.judgements)
    write_jsonl(out.table, scored.table)
    atomic_write_text(out.table_md, table_markdown(qs, scored.table))
    text = format_summary(summary, title=f"{summary['name']} vs {ref_source} on {plan.spec} (judge {judge_model})")
    if "oracle" in summary:
        o = summary["oracle"]
        text += "\noracle exact accuracy: " + ", ".join(f"{f} {a:.0%}" for f, a in o["accuracy"].items())
        text += (
            f"; overall {o['overall']:.1%} (reference answers {o['reference_overall']:.1%})"
            if o["overall"] is not None and o["reference_overall"] is not None
            else ""
        )
    text += f"\nquestions also in a pool of this run: {overlap} (Train Pools: {summary['seen_in_training']})"
    if summary["seen_in_training"]:
        text += (
            f"\nwarning: {summary['seen_in_training']} of the {len(qs)} questions occur in a Train Pool of "
            "this run (the student was trained on them)"
        )
    atomic_write_text(out.summary_txt, text + "\n")
    check_judge(ctx, plan, scored)  # everything above is written to look at; no summary, so not done
    write_json(out.summary, summary)  # last: its presence (with this fingerprint) marks the evaluation done
    return summary


def check_judge(ctx: RunContext, plan: EvalPlan, scored: Scored) -> None:
    """The failure gates of the judge: questions whose judge call failed (llm.max_failure_rate) or whose every
    verdict was unreadable (llm.max_unparsed_rate), over the questions judged, stop the evaluation before its
    summary.json (exit status 4); the answers, judgements and table are written, the calls cached."""
    judged = len(scored.rows)
    excluded = collections.Counter(t["excluded"] for t in scored.table)
    where, marker = f"evaluation {plan.name}", f"{plan.out.summary.name} (it is not finished)"
    check_failures(ctx.cfg, None, PHASE, "judge pairs", excluded[JUDGE_CALL_FAILED], judged, where=where,
                   marker=marker)
    check_unparsed(ctx.cfg, None, PHASE, "judge pairs", excluded[JUDGE_UNPARSED], judged, where=where, marker=marker,
                   replies=str(plan.out.judgements),
                   remedy=f"raise eval.judge_attempts (now {ctx.cfg.eval.judge_attempts}), or give llm.judge a model or "
                          "a prompt (eval.judge_template, eval.judge_prompts) whose replies follow its verdict format")


def seen_in_training(run: RunLayout, qs: Sequence[EvalQuestion]) -> int:
    """How many evaluated questions occur (same content id) in any Train Pool of the run (the control student's
    too): a leak check."""
    ids = {q.id for q in qs}
    seen: set[str] = set()
    for rp in run.rounds():
        for pool in (rp.train_pool, rp.control.train_pool):
            if pool.exists():
                seen |= {str(r.get("id")) for r in read_jsonl(pool)} & ids
    return len(seen)


def pool_overlap(run: RunLayout, qs: Sequence[EvalQuestion]) -> int:
    """How many evaluated questions occur (same content id) in any Train or Cache Pool of the run (the control
    student's too)."""
    ids = {q.id for q in qs}
    seen: set[str] = set()
    for rp in run.rounds():
        for pool in (rp.train_pool, rp.cache_pool, rp.control.train_pool, rp.control.cache_pool):
            if pool.exists():
                seen |= {str(r.get("id")) for r in read_jsonl(pool)} & ids
    return len(seen)


def oracle_accuracy(
    world: World, qs: Sequence[EvalQuestion], cand: dict[str, str | None], refs: dict[str, str | None]
) -> dict[str, Any]:
    """Exact accuracy per task family of the candidate, and overall of the reference (offline world)."""
    acc = family_accuracy(world, ((q.instruction, cand[q.id] or "") for q in qs))
    ref = family_accuracy(world, ((q.instruction, r) for q in qs if (r := refs[q.id]) is not None))
    return {**acc, "reference_overall": ref["overall"]}


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


def evaluate_round(ctx: RunContext, r: int, rp: RoundPaths | None = None, *, name: str = "",
                   phase: str = PHASE) -> dict[str, Any]:
    """The loop's per-round hook: evaluate round r's student into round_XX/eval/ and keep the summary as the
    round's eval.json (idempotent: a finished evaluation is read back). `rp`: another track's files of the round
    (the control student's, lion.control), whose calls go to the ledger under `phase`."""
    rp = rp or ctx.run.round(r)
    if rp.eval_summary.exists():
        return read_json_or_empty(rp.eval_summary)
    summary = evaluate(ctx, rp.student, rp.eval, name=name or f"round {r}", phase=phase)
    summary = {k: v for k, v in summary.items() if k != "fingerprint"}
    write_json(rp.eval_summary, summary)
    return summary


# --------------------------------------------------------------------------------------------- CLI


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lion.evaluate",
        description="Relative score of a student vs reference answers, judged in both orders.",
    )
    add_config_args(p)
    for action in p._actions:  # --reviews calls no model and reads no config
        if action.dest == "config":
            action.required = False
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--round", "-r", type=int, help="evaluate this round's student (RUN/round_XX/student)")
    who.add_argument("--model", help="evaluate any local model directory (or a hub id in the local cache)")
    who.add_argument(
        "--base", action="store_true", help="evaluate the configured base model (student.model) as a baseline"
    )
    who.add_argument(
        "--reviews", default=None, metavar="FILE",
        help="recompute the relative score from existing judge reviews (FastChat review rows or our "
             "judgements.jsonl); no model is called and no config is needed",
    )
    p.add_argument("--name", default=None, help="with --model: results go to RUN/eval/NAME (default: the dir name)")
    p.add_argument(
        "--questions", default=None, help="question file (FastChat or JSONL) or 'oracle' (default: eval.questions); "
                                          "with --reviews: only the categories of the questions"
    )
    p.add_argument(
        "--answers", default=None, nargs="+", metavar="FILE",
        help="reference answers file (default: eval.reference_answers, else the teacher); with --reviews: "
             "REF.jsonl CAND.jsonl, the reference's and the candidate's answers (their answer ids tell each "
             "review's order)",
    )
    p.add_argument("--format", default="fastchat", choices=sorted(FORMATS),
                   help="with --reviews: the verdict format of the reviews (default fastchat)")
    p.add_argument("--max-questions", type=int, default=None, help="evaluate only the first N questions")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.reviews is not None:
        from .reviews import replay_report

        if args.answers is not None and len(args.answers) != 2:
            parser.error("--answers with --reviews: give two files, the reference's and the candidate's answers")
        result, text = replay_report(args.reviews, args.answers, args.questions, args.format)
        print(text)
        return 0 if result["parsed"] else 1
    if args.config is None:
        parser.error("the following arguments are required: --config/-c")
    if args.answers is not None and len(args.answers) != 1:
        parser.error("--answers: give one reference answers file (two only with --reviews)")
    answers_file = args.answers[0] if args.answers else None
    overrides = list(args.overrides)
    if args.max_questions is not None:
        overrides.append(f"eval.max_questions={args.max_questions}")
    cfg = load_config(args.config, overrides)
    run = RunLayout(cfg.run_dir)
    with RunContext(cfg, progress=args.progress) as ctx:
        if args.round is not None:
            model, out, name = run.round(args.round).student, run.round(args.round).eval, f"round {args.round}"
            if not model.is_dir():
                raise LionError(f"{model}: round {args.round}'s student does not exist (run its imitation first)")
        elif args.model:
            model = Path(args.model)
            if not model.exists() and not _hub_id(args.model):
                raise LionError(f"--model {model}: no such model directory")
            name = args.name or (model.resolve().name if model.exists() else args.model.replace("/", "--"))
            out = run.eval(name)
        else:
            from .student import resolve_base_model

            model = Path(resolve_base_model(ctx.cfg.student, run.base_model))
            name = args.name or "base"
            out = run.eval(name)
        summary = evaluate(ctx, model, out, questions=args.questions, answers=answers_file, name=name)
        write_json(run.usage, ctx.gateway.usage_summary())
    print(out.summary_txt.read_text(encoding="utf-8"), end="")
    print(f"saved under {out.dir}")
    return 0 if summary["overall"]["n_scored"] else 1


if __name__ == "__main__":
    from .errors import cli_main

    cli_main(main, sys.argv[1:])
