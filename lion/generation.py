"""Phase 3, generation: new instructions like the hard ones, and new easy ones on rarer topics.

    python -m lion.generation --config C --round R

From each hard seed the generator writes a new instruction of the same domain and task type, of similar
length and difficulty (prompts/generate_hard.txt); from each easy seed, one of the same domain on a rarer
topic (prompts/generate_easy.txt). Seeds are drawn without replacement while they last (then the seed list
is reshuffled). A seed's n-th use, counted over this round and every earlier one (their generated and rejected
rows, by kind and parent), is the n-th sample of its prompt: a new call, never a replay of an earlier round's
reply, which would only come back as a near-duplicate of what that round already kept.
A reply cut at the generator's max_tokens (finish_reason "length") is rejected as `truncated`; the others go
through the filters of `lion.filters` (parse, length, meta words, ROUGE-L near-duplicates
against the Cache Pool and everything accepted so far, decontamination against evaluation sets); each
rejected candidate is kept with its reason. Requests go out in concurrent waves until both targets are met
or `generation.max_attempts_factor` × target requests were made, and the phase reports which.
With the `progress` selector, each kind's requests are shared among the clusters its seeds belong to by the
shares of round_XX/allocation.json (`QuotaSampler`).
With `pools.fresh_share`, that share of the round's new instructions is drawn from the seed files' rows no pool
holds yet (kind `fresh`, lion.pools.unused_seeds) and the generator is asked for the rest.
Everything is deterministic given the seed and the (cached) replies, so a resumed phase replays exactly.
The Cache Pool is read in one streamed pass (its texts into the near-duplicate index, the byte offsets of its
hard and easy rows kept); a drawn seed is read back from the pool file, so only the index grows with the pool.
"""

from __future__ import annotations

import argparse
import array
import json
import logging
import math
import random
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .context import RunContext, make_phase_parser, run_phase
from .errors import DataError, LionError
from .failures import check_failures
from .prompts import reply_marker
from .records import Instruction, iter_jsonl, read_json_or_empty, read_jsonl, write_json, write_jsonl
from .teachers.base import ChatRequest

KINDS = ("hard", "easy")
log = logging.getLogger("lion.generation")


def parse_task(reply: str | None, marker: str = "TASK:") -> str | None:
    """The new instruction in a generator reply (`TASK: ...`, as the templates ask), or None.

    `marker` is what the template asks the reply to begin with (`lion.prompts.reply_marker`). Accepts markdown
    decoration around it (`**TASK:**`, `> TASK:`) and quotes around the task; text before the marker line is
    ignored. A reply with no marker is a parse failure.
    """
    if not reply:
        return None
    label = re.escape(marker.rstrip(":").strip()).replace(r"\ ", r"\s+")
    pattern = re.compile(rf"^[\s>*_#`\"']*{label}[\s*_`]*:[\s*_`]*(.*)\Z", re.IGNORECASE | re.DOTALL)
    lines = reply.strip().splitlines()
    for n, line in enumerate(lines):
        m = pattern.match(line)
        if m:
            text = "\n".join([m.group(1), *lines[n + 1 :]]).strip()
            text = text.strip("*_` ")
            if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
                text = text[1:-1].strip()
            return text or None
    return None


class SeedSampler:
    """Seeds without replacement while they last; then a fresh shuffle. Counts uses per seed.

    `full(seed)` (the category cap) makes the sampler pass over seeds whose category has had its share; when
    every seed is full, `next` returns None. `seeds` may be any sequence (a list, or `PoolRows` reading rows
    from the pool file on demand): the shuffle permutes positions (an array of 8-byte ints), which draws exactly
    the seeds shuffling the list would."""

    def __init__(self, seeds: Sequence[Instruction], rng: random.Random,
                 full: Callable[[Instruction], bool] = lambda s: False, used: Counter[str] | None = None):
        self.seeds, self.rng, self.full = seeds, rng, full
        self.order: array.array[int] = array.array("q")
        self.uses: Counter[str] = Counter(used or {})  # uses per seed id so far, earlier rounds included

    def next(self) -> tuple[Instruction, int] | None:
        for _ in range(2):
            if not self.order:
                self.order = array.array("q", range(len(self.seeds)))
                self.rng.shuffle(self.order)
            while self.order:
                seed = self.seeds[self.order.pop()]
                if self.full(seed):
                    continue
                sample = self.uses[seed.id]
                self.uses[seed.id] += 1
                return seed, sample
        return None


class QuotaSampler:
    """Seeds grouped by cluster, drawn so that each cluster's share of the draws follows `shares` (the progress
    selector's allocation: a smooth weighted round robin over the clusters that still have seeds); within a cluster
    a `SeedSampler` (without replacement while seeds last, then reshuffled; uses counted across rounds)."""

    def __init__(self, seeds: dict[str, Sequence[Instruction]], shares: dict[str, float], rng: random.Random,
                 full: Callable[[Instruction], bool] = lambda s: False, used: Counter[str] | None = None):
        self.subs = {c: SeedSampler(rows, rng, full, used) for c, rows in sorted(seeds.items()) if len(rows)}
        w = {c: max(0.0, float(shares.get(c, 0.0))) for c in self.subs}
        total = sum(w.values())
        self.w = {c: (v / total if total > 0 else 1 / len(w)) for c, v in w.items()}
        self.drawn: Counter[str] = Counter()

    def next(self) -> tuple[Instruction, int] | None:
        open_ = [c for c in self.subs if self.w[c] > 0] or list(self.subs)
        n = sum(self.drawn.values())
        while open_:
            c = max(open_, key=lambda c: (self.w[c] * (n + 1) - self.drawn[c], c))
            got = self.subs[c].next()
            if got is None:  # every seed of the cluster hit the category cap
                open_.remove(c)
                continue
            self.drawn[c] += 1
            return got
        return None


def earlier_uses(ctx: RunContext, r: int) -> dict[str, Counter[str]]:
    """How often each seed id was asked for, per kind, in the generation phases of rounds before r.

    Every request of a phase leaves one row, kept or rejected, with its kind and parent (the seed's id)."""
    used = {k: Counter[str]() for k in KINDS}
    for q in range(1, r):
        rq = ctx.run.round(q)
        for path in (rq.generated, rq.rejected):
            if path.is_file():
                for _, row in iter_jsonl(path):
                    if row.get("kind") in used and row.get("parent"):
                        used[row["kind"]][str(row["parent"])] += 1
    return used


def category(ctx: RunContext, inst: Instruction) -> str | None:
    """A seed's category for the cap: its meta category or family, else the offline world's task family."""
    c = inst.meta.get("category") or inst.meta.get("family")
    if c is None and ctx.world is not None:
        c = ctx.world.family(inst.instruction)
    return None if c is None else str(c)


class PoolRows(Sequence[Instruction]):
    """Some rows of a pool file, read on demand by byte offset (the seeds of one kind, without holding them)."""

    def __init__(self, path: Path, offsets: array.array[int]) -> None:
        self.path, self.offsets = path, offsets
        self._f: Any = None

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> Instruction:  # type: ignore[override]
        if self._f is None:
            self._f = self.path.open("rb")
        self._f.seek(self.offsets[i])
        return Instruction.from_json(json.loads(self._f.readline()))

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def scan_pool(pool: Path, split: Path, offsets: dict[str, array.array[int]],
              by_cluster: dict[str, dict[str, array.array[int]]] | None = None) -> Iterator[str]:
    """The Cache Pool's instruction texts (for the filter's index), streamed; on the way, the byte offset of each
    row the round's split labels hard or easy is appended to `offsets[label]`, in pool order (and, with
    `by_cluster`, to `by_cluster[label][cluster]` when the split row names a cluster). split.jsonl is written in
    pool order, so the two files are read side by side; a split in another order falls back to a label per id."""
    labels: dict[str, tuple[str, str | None]] | None = None
    with pool.open("rb") as fp:
        split_rows = iter_jsonl(split)
        at = 0
        for lineno, raw in enumerate(fp, 1):
            here, at = at, at + len(raw)
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as e:
                raise DataError(f"{pool}:{lineno}: not valid JSON ({e.msg})") from None
            label = cluster = None
            if labels is None:
                nxt = next(split_rows, None)
                if nxt is not None and nxt[1].get("id") == row.get("id"):
                    label, cluster = nxt[1].get("label"), nxt[1].get("cluster")
                else:  # not in pool order: read the labels by id
                    labels = {str(r["id"]): (r["label"], r.get("cluster")) for r in read_jsonl(split)}
            if labels is not None:
                label, cluster = labels.get(row.get("id"), (None, None))
            # an unjudged item (selector none: Self-Instruct) seeds both branches; stuck and excluded ones neither
            for kind in (KINDS if label == "unjudged" else (label,) if label in offsets else ()):
                offsets[kind].append(here)
                if by_cluster is not None and cluster is not None:
                    by_cluster[kind].setdefault(str(cluster), array.array("q")).append(here)
            yield row["instruction"]


def generation(ctx: RunContext, r: int) -> dict[str, Any]:
    """Run phase 3 of round r (idempotent)."""
    rp = ctx.run.round(r)
    if ctx.run.is_done(r, "generation"):
        return read_json_or_empty(rp.phase_metrics("generation"))
    if not ctx.run.is_done(r, "discrimination"):
        raise LionError(
            f"round {r} generation needs round {r}'s discrimination first ({rp.done('discrimination')} missing)"
        )
    gc = ctx.cfg.generation
    fresh = fresh_rows(ctx, r)
    offsets: dict[str, array.array[int]] = {k: array.array("q") for k in KINDS}
    # the progress selector's shares of the requests per cluster (round_XX/allocation.json), when it ran
    shares = read_json_or_empty(rp.allocation).get("clusters") or {}
    by_cluster: dict[str, dict[str, array.array[int]]] | None = {k: {} for k in KINDS} if shares else None
    # one pass over the Cache Pool: its texts go into the near-duplicate index, its hard/easy rows' offsets kept
    filt = candidate_filter(ctx, scan_pool(rp.cache_pool, rp.split, offsets, by_cluster))
    for i in fresh:  # a generated instruction may not repeat a fresh one either
        filt.accept(i.instruction)
    seeds = {k: PoolRows(rp.cache_pool, offsets[k]) for k in KINDS}
    quota = None
    if by_cluster is not None:
        quota = ({k: {c: PoolRows(rp.cache_pool, offs) for c, offs in by_cluster[k].items()} for k in KINDS},
                 {c: float(v["share"]) for c, v in shares.items()})
    wanted = generation_targets(gc.n_hard, gc.n_easy, len(fresh))
    rng = random.Random(f"{ctx.cfg.seed}/{gc.seed}/{r}")
    try:
        grown = grow(ctx, r, seeds, wanted, filt, rng, earlier_uses(ctx, r), phase="generation",
                     desc=f"round {r} generation", quota=quota)
    finally:
        for rows in [*seeds.values(), *(rows for per in (quota[0].values() if quota else ()) for rows in per.values())]:
            rows.close()
    write_jsonl(rp.generated, [*(i.to_json() for k in KINDS for i in grown.accepted[k]), *(i.to_json() for i in fresh)])
    write_jsonl(rp.rejected, grown.rejected)
    metrics = {**grown.metrics(wanted, seeds), "fresh": len(fresh)}
    if grown.cluster_requests is not None:  # the progress selector's shares, as drawn
        metrics["cluster_requests"] = grown.cluster_requests
    write_json(rp.phase_metrics("generation"), metrics)
    ctx.run.mark_done(r, "generation")
    return metrics


def candidate_filter(ctx: RunContext, pool_texts: Iterable[str]) -> Any:
    """The filters of lion.filters over `pool_texts` (the near-duplicate index), the evaluation sets of
    generation.decontaminate and (offline) the held-out questions."""
    from .filters import CandidateFilter, load_eval_questions

    gc = ctx.cfg.generation
    held_out = [q.instruction for q in ctx.heldout()] if ctx.cfg.eval.questions == "oracle" else []
    return CandidateFilter(gc, pool_texts, load_eval_questions(gc.decontaminate), held_out)


@dataclass
class Grown:
    """What one generation produced: accepted instructions per kind, rejected candidates, requests per kind."""

    accepted: dict[str, list[Instruction]]
    rejected: list[dict[str, Any]]
    sent: Counter[str]
    capped: set[str]
    cluster_requests: dict[str, dict[str, int]] | None = None  # QuotaSampler: requests per kind and cluster

    def metrics(self, wanted: dict[str, int], seeds: dict[str, Sequence[Instruction]]) -> dict[str, Any]:
        """generation.json's figures, with why it stopped."""
        if all(len(self.accepted[k]) >= wanted[k] for k in KINDS):
            stopped = "targets_met"
        elif any(wanted[k] and not seeds[k] for k in KINDS):
            stopped = "no_seeds"
        else:
            stopped = "category_cap" if self.capped else "max_attempts"
        return {
            "wanted": wanted,
            "seeds": {k: len(seeds[k]) for k in KINDS},
            "accepted": {k: len(self.accepted[k]) for k in KINDS},
            "requests": dict(self.sent),
            "rejected": dict(Counter(x["reason"] for x in self.rejected)),
            "stopped": stopped,
        }


def grow(ctx: RunContext, r: int, seeds: dict[str, Sequence[Instruction]], wanted: dict[str, int], filt: Any,
         rng: random.Random, used: dict[str, Counter[str]], *, phase: str, desc: str, sample_base: int = 0,
         quota: tuple[dict[str, dict[str, Sequence[Instruction]]], dict[str, float]] | None = None) -> Grown:
    """Ask the generator for new instructions from `seeds` (per kind: the hard and easy templates) in waves until
    `wanted` are accepted by `filt` or generation.max_attempts_factor x wanted requests were made. A seed's n-th
    use (`used`: uses so far) is sample `sample_base + n` of its prompt. Shared by the loop's generation and the
    self_instruct control (lion.control: its own sample numbers, ledger phase "control-generation"). `quota`: each
    kind's seeds by cluster and the clusters' shares (selector progress): the requests follow the shares."""
    gc = ctx.cfg.generation
    budget = {k: math.ceil(wanted[k] * gc.max_attempts_factor) if seeds[k] else 0 for k in KINDS}
    accepted: dict[str, list[Instruction]] = {k: [] for k in KINDS}
    grown = {k: Counter[str]() for k in KINDS}  # accepted per seed category (generation.max_category_share)

    def full(k: str) -> Callable[[Instruction], bool]:
        cap = None if gc.max_category_share is None else max(1, math.floor(gc.max_category_share * wanted[k]))
        return lambda s: cap is not None and (c := category(ctx, s)) is not None and grown[k][c] >= cap

    samplers: dict[str, SeedSampler | QuotaSampler] = {k: SeedSampler(seeds[k], rng, full(k), used[k]) for k in KINDS}
    if quota is not None:
        by_cluster, shares = quota
        samplers = {k: QuotaSampler(by_cluster[k], shares, rng, full(k), used[k]) for k in KINDS}
    templates = {k: ctx.template(f"generate_{k}") for k in KINDS}
    markers = {k: reply_marker(templates[k]) for k in KINDS}

    rejected: list[dict[str, Any]] = []
    sent = Counter[str]()
    capped: set[str] = set()
    wave = 0
    while True:
        plan: list[tuple[str, Instruction, int]] = []
        for k in KINDS:
            need = wanted[k] - len(accepted[k])
            room = budget[k] - sent[k]
            n = min(need + need // 4 + 1, room, gc.batch_size) if need > 0 else 0
            for _ in range(max(n, 0)):
                drawn = samplers[k].next()
                if drawn is None:  # every seed's category has had its share
                    capped.add(k)
                    break
                plan.append((k, *drawn))
        if not plan:
            break
        wave += 1
        requests = [
            ChatRequest(
                messages=[{"role": "user", "content": templates[k].render(instruction=s.instruction)}],
                sample=sample_base + sample,
            )
            for k, s, sample in plan
        ]
        results = ctx.gateway.chat_many("generator", phase, requests, desc=f"{desc} wave {wave}")
        for (k, seed, _), res in zip(plan, results):
            sent[k] += 1
            if len(accepted[k]) >= wanted[k]:  # the wave over-asked a little to absorb rejections
                rejected.append({"text": res.text, "kind": k, "parent": seed.id, "reason": "surplus"})
                continue
            if full(k)(seed):  # the seed's category reached its share during this wave
                rejected.append({"text": res.text, "kind": k, "parent": seed.id, "reason": "category_cap"})
                continue
            if not res.ok:
                rejected.append(
                    {"text": None, "kind": k, "parent": seed.id, "reason": "call_failed", "detail": res.error}
                )
                continue
            if res.finish_reason == "length":  # cut at max_tokens, the task may be too (the original Lion rejects it)
                rejected.append({"text": res.text, "kind": k, "parent": seed.id, "reason": "truncated",
                                 "detail": "the generator's reply hit llm.generator.max_tokens"})
                continue
            text = parse_task(res.text, markers[k])
            decision = filt.check(text)
            if not decision.ok:
                rejected.append(
                    {
                        "text": text if text is not None else res.text,
                        "kind": k,
                        "parent": seed.id,
                        "reason": decision.reason,
                        "detail": decision.detail,
                    }
                )
                continue
            assert text is not None
            filt.accept(text)
            if (c := category(ctx, seed)) is not None:
                grown[k][c] += 1
            meta = {"parent_kind": seed.kind}
            if res.served_model:  # the snapshot that wrote it (lion.snapshots)
                meta["model"] = res.served_model
            if res.fingerprint:
                meta["fingerprint"] = res.fingerprint
            new = Instruction(instruction=text, round=r, kind=k, parent=seed.id, meta=meta)
            accepted[k].append(new)

    check_failures(ctx.cfg, r, phase, "generator calls",
                   sum(1 for x in rejected if x["reason"] == "call_failed"), sum(sent.values()))
    drawn = {k: dict(sorted(s.drawn.items())) for k, s in samplers.items() if isinstance(s, QuotaSampler)}
    return Grown(accepted, rejected, sent, capped, drawn or None)


def generation_targets(n_hard: int, n_easy: int, n_fresh: int) -> dict[str, int]:
    """What the generator is asked for when `n_fresh` of the round's new instructions come from the seed file: the
    rest, split between hard and easy in the configured proportion."""
    total = n_hard + n_easy
    left = max(0, total - n_fresh)
    hard = round(left * n_hard / total) if total else 0
    return {"hard": hard, "easy": left - hard}


def fresh_rows(ctx: RunContext, r: int) -> list[Instruction]:
    """`pools.fresh_share` of the round's new instructions, drawn from the train seed file's unused rows (never a
    held-out or evaluation question: the same checks as generated ones, but not the near-duplicate one, which the
    seed pool itself never went through), as kind `fresh` of round r."""
    from .pools import unused_seeds

    gc, share = ctx.cfg.generation, ctx.cfg.pools.fresh_share
    n = round(share * (gc.n_hard + gc.n_easy))
    if not n:
        return []
    # unused_seeds keeps out every pool and evaluation question; the probe set (selector progress) must stay
    # untrained, and the control student's pools are its own
    filt = candidate_filter(ctx, ())
    rows = [i for i in unused_seeds(ctx, 2 * n, r, salt="fresh", exclude=[ctx.run.probe, *ctx.run.control_pools()])
            if filt.check(i.instruction).reason in (None, "near_duplicate", "too_short", "too_long", "meta_word")]
    if len(rows) < n:
        log.warning("round %d: pools.fresh_share wants %d fresh seed instructions, the seed file has %d unused "
                    "ones left; generation makes up the rest", r, n, len(rows))
    return [Instruction(i.instruction, i.input, round=r, kind="fresh", meta={**i.meta, "fresh_from": "train_seed"})
            for i in rows[:n]]


def make_parser() -> argparse.ArgumentParser:
    return make_phase_parser("generation", __doc__)


def main(argv: list[str] | None = None) -> int:
    return run_phase(
        generation,
        make_parser().parse_args(argv),
        lambda m: (
            f"{m['accepted']['hard']}/{m['wanted']['hard']} hard, "
            f"{m['accepted']['easy']}/{m['wanted']['easy']} easy, stopped: {m['stopped']}, "
            f"rejected: {m['rejected']}"
        ),
    )


if __name__ == "__main__":
    from .errors import cli_main

    cli_main(main, sys.argv[1:])
