"""The preference stage (`imitation.preference`): the referee's verdicts, or the student's own answers, as signal.

    python -m lion.preference --config C --round R

Discrimination has already paid for everything this stage needs: the student's answer to every Cache Pool
instruction, the teacher's, and (with the referee) a verdict on the two in both orders. After round r's
discrimination, each pair becomes a (chosen = the teacher's answer, rejected = the student's answer) example:

- `dpo`: the pairs the referee judged hard with both orders agreeing (the teacher scored higher in each order
  and the mean gap is at least `discrimination.tau`): what the referee is sure the student got wrong;
- `spin` (Chen et al. 2024, Self-Play fine-tuning): every pair whose two answers differ, no referee needed.

Why here, after discrimination and before the next round's imitation: the rejected answers were sampled from
round r's student, the very model the stage starts from, so the reference model of the loss is the policy that
wrote them (on-policy, as DPO's derivation and SPIN's iteration assume); the next round's supervised training then
starts from the result (round_XX/student_pref), so the loop keeps imitation as the last word on each round's new
data. The round's evaluation (before discrimination) scores the supervised student; the next round's shows the
stage's effect with the new data.

The reference log-probabilities are computed once, with round r's student, before training
(lion.student.score.answer_nll), so training holds one model; the loss is DPO's (lion.student.objectives), trained
like SFT by lion.student.train (LoRA or full, mid-training checkpoints, resume, torchrun). Figures (pairs by
source, pairs dropped, loss, implicit reward margin, the share of pairs ranked right; first and last step) go to
round_XX/preference.json, the round line and the report. Instructions of the probe set (selector progress) never
become pairs: they must stay untrained.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
from typing import Any

from .answers import teacher_identity
from .context import RunContext, make_phase_parser, run_phase
from .errors import LionError
from .records import iter_jsonl, iter_pool, read_json_or_empty, read_pool, write_json, write_jsonl


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def collect_pairs(ctx: RunContext, r: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Round r's (instruction, chosen, rejected) pairs for `imitation.preference`, and what was left out, by reason."""
    ic, rp = ctx.cfg.imitation, ctx.run.round(r)
    who = teacher_identity(ctx.cfg)
    student = {str(row["id"]): row for _, row in iter_jsonl(rp.student_answers)} if rp.student_answers.exists() else {}
    labels = {str(row["id"]): row for _, row in iter_jsonl(rp.split)} if rp.split.exists() else {}
    probe = {i.id for i in read_pool(ctx.run.probe)} if ctx.run.probe.is_file() else set()
    pairs: list[dict[str, Any]] = []
    left_out: dict[str, int] = {}

    def skip(why: str) -> None:
        left_out[why] = left_out.get(why, 0) + 1

    for inst in iter_pool(rp.cache_pool):
        t = ctx.answers.get(inst.id, who)
        s = student.get(inst.id)
        if inst.id in probe:
            skip("probe set")
        elif t is None or not t["answer"] or t.get("finish_reason") == "length":
            skip("no full teacher answer")
        elif s is None or s.get("answer") is None:
            skip("no student answer")
        elif _same(t["answer"], s["answer"]):
            skip("same answers")
        elif ic.preference == "dpo" and not (
                (row := labels.get(inst.id)) is not None and row["label"] == "hard" and row.get("flipped") is False
                and (row.get("gap") or 0) > 0):
            skip("not judged hard in both orders")
        else:
            pairs.append({"id": inst.id, "instruction": inst.instruction, "input": inst.input,
                          "chosen": t["answer"], "rejected": s["answer"]})
    if ic.preference_max_pairs is not None and len(pairs) > ic.preference_max_pairs:
        rank = {p["id"]: hashlib.sha256(f"{ctx.cfg.seed}/{r}/{p['id']}".encode()).hexdigest() for p in pairs}
        keep = set(sorted(rank, key=rank.__getitem__)[: ic.preference_max_pairs])
        left_out["over preference_max_pairs"] = len(pairs) - len(keep)
        pairs = [p for p in pairs if p["id"] in keep]
    return pairs, left_out


def with_reference(ctx: RunContext, r: int, pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pairs with round r's student's summed log-probability of each answer (the loss's reference)."""
    from .student.data import format_prompt
    from .student.infer import load_prompt_tokenizer
    from .student.score import answer_nll

    sc, model = ctx.cfg.student, ctx.run.round(r).student
    tok = load_prompt_tokenizer(model) if sc.prompt_format == "chat_template" else None
    prompts = [format_prompt(p["instruction"], p["input"], fmt=sc.prompt_format, tokenizer=tok) for p in pairs]
    nll = answer_nll(model, prompts * 2, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs], sc.infer,
                     max_length=sc.max_length, progress=ctx.progress)
    out = []
    for k, p in enumerate(pairs):
        c, rj = nll[k], nll[len(pairs) + k]
        if c is not None and rj is not None:
            out.append({**p, "ref_chosen": -c[0], "ref_rejected": -rj[0]})
    return out


def preference(ctx: RunContext, r: int) -> dict[str, Any]:
    """Run round r's preference stage (idempotent; a no-op unless imitation.preference is set)."""
    ic, rp = ctx.cfg.imitation, ctx.run.round(r)
    if ic.preference == "none":
        return {}
    if ctx.run.is_done(r, "preference"):
        return read_json_or_empty(rp.phase_metrics("preference"))
    if not ctx.run.is_done(r, "discrimination"):
        raise LionError(f"round {r} preference stage needs round {r}'s discrimination first "
                        f"({rp.done('discrimination')} missing)")
    if rp.preference_pairs.exists():  # a resumed stage: the same pairs, no reference pass again
        pairs = [row for _, row in iter_jsonl(rp.preference_pairs)]
        left_out = read_json_or_empty(rp.phase_metrics("preference")).get("left_out", {})
    else:
        pairs, left_out = collect_pairs(ctx, r)
        pairs = with_reference(ctx, r, pairs)
        write_jsonl(rp.preference_pairs, pairs)
    metrics: dict[str, Any] = {"method": ic.preference, "pairs": len(pairs), "left_out": left_out}
    if not pairs:
        metrics["skipped"] = "no pairs: the next round starts from the round's student"
        write_json(rp.phase_metrics("preference"), metrics)
        ctx.run.mark_done(r, "preference", {"pairs": 0})
        return metrics
    write_json(rp.phase_metrics("preference"), metrics)  # the left-out counts survive a resume
    from .student.objectives import Preference
    from .student.train import train_student

    sc = ctx.cfg.student
    cfg = dataclasses.replace(sc, lr=ic.preference_lr or sc.lr / 10, epochs=ic.preference_epochs,
                              max_steps=ic.preference_max_steps, packing=False)
    result = train_student(cfg, [{k: p[k] for k in ("instruction", "input", "chosen", "rejected", "ref_chosen",
                                                    "ref_rejected")} for p in pairs],
                           rp.student, rp.preference_student, seed=ctx.cfg.seed + r, progress=ctx.progress,
                           objective=Preference(beta=ic.preference_beta, sft_weight=ic.preference_sft_weight))
    metrics.update(student=str(result.path), train=result.metrics)
    write_json(rp.phase_metrics("preference"), metrics)
    ctx.run.mark_done(r, "preference")
    return metrics


def make_parser() -> argparse.ArgumentParser:
    return make_phase_parser("preference", __doc__)


def main(argv: list[str] | None = None) -> int:
    def describe(m: dict[str, Any]) -> str:
        if not m:
            return "imitation.preference is none: nothing to do"
        t = m.get("train") or {}
        return (f"{m['method']}: {m['pairs']} pairs, margin {t.get('margin_first')} -> {t.get('margin_last')}, "
                f"student at {m.get('student', '-')}")

    return run_phase(preference, make_parser().parse_args(argv), describe)


if __name__ == "__main__":
    from .errors import cli_main

    cli_main(main, sys.argv[1:])
