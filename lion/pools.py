"""The Train Pool and the Cache Pool of each round.

Round 1's pools come from the seed files (`pools.train_seed`, `pools.cache_seed`, any format
`lion.records.load_instructions` reads). After round r's generation the new instructions N_r give

    Train Pool(r+1) = N_r                      (pools.train_pool: replace, the paper)
                    = Train Pool(r) ∪ N_r      (pools.train_pool: accumulate)
    Cache Pool(r+1) = Cache Pool(r) ∪ N_r

Seed rows longer than `pools.max_instruction_tokens` tokens of the student's tokenizer (default:
student.max_length) are left out and counted (`pools.too_long: skip`), or stop the run naming file:line
(`error`); RUN/seed_report.json holds what was read, merged and rejected.
Seed rows that no pool has used (beyond `pools.limit`, or in a seed file larger than the pools) are drawn, at random
and deterministically by (run seed, round), by `unused_seeds` (the plain control student's new instructions,
lion.control); `count_unused_seeds` says how many there are before anything is spent.
Each round's pools are written into its folder before any phase of it runs, so every phase (and a
resumed run) reads exactly the pools the round started with. Pools are streamed from file to file (only the
ids seen are kept, `lion.records.IdSet`), so a million-instruction pool never sits in memory.

With `pools.seed_answers: teacher`, the answers the seed files already hold (Alpaca `output`, a ShareGPT or
OpenAI chat's first assistant reply) are recorded in the answer store as the teacher's answers (marked
`"source": "seed"`) as the seed rows stream past, before round 1's pools are complete; the teacher is never
asked for those instructions (the train seed's answer wins when both seed files answer one instruction).
"""

from __future__ import annotations

import array
import logging
import random
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, LionError
from .records import (
    IdSet,
    Instruction,
    LoadReport,
    RowCheck,
    count_rows,
    instruction_id,
    iter_instructions,
    iter_pool,
    union_pools,
    write_json,
    write_pool,
)

if TYPE_CHECKING:
    from .phasectx import PhaseContext as RunContext

log = logging.getLogger("lion.pools")


def token_check(ctx: RunContext) -> RowCheck | None:
    """The seed-row check of `pools.max_instruction_tokens` (None = student.max_length; 0 = no limit), counted with
    the student's own tokenizer: a row over it would be dropped by training, and could not be answered by the
    student within its context; the teacher and the referee never see it either."""
    pc, sc = ctx.cfg.pools, ctx.cfg.student
    limit = sc.max_length if pc.max_instruction_tokens is None else pc.max_instruction_tokens
    if not limit:
        return None
    key = "pools.max_instruction_tokens" if pc.max_instruction_tokens is not None else "student.max_length"
    tokenizer: list[Any] = []  # loaded on the first row long enough to need it

    def count(text: str) -> int:
        if not tokenizer:
            from .student import resolve_base_model
            from .student.infer import load_prompt_tokenizer

            base = resolve_base_model(sc, ctx.run.base_model)
            try:
                tokenizer.append(load_prompt_tokenizer(base))
            except (OSError, ValueError) as e:
                raise ConfigError(f"student.model: cannot load its tokenizer from {str(base)!r} to count seed tokens "
                                  f"(pools.max_instruction_tokens; 0 turns the check off): {e}") from None
        return len(tokenizer[0](text, add_special_tokens=False, verbose=False)["input_ids"])

    def check(inst: Instruction) -> tuple[str, str] | None:
        text = inst.instruction + ("\n\n" + inst.input if inst.input else "")
        if 2 * len(text.encode("utf-8")) + 2 <= limit:
            return None  # fits whatever the tokenizer: a token covers at least a byte (+ a word-start marker)
        n = count(text)
        if n <= limit:
            return None
        return "too_long", (f"instruction + input is {n} tokens, over the limit of {limit} ({key}); "
                            "set pools.too_long: skip to leave such rows out, or raise the limit")

    return check


def write_seed_pools(ctx: RunContext, train_path: Path, cache_path: Path) -> None:
    """Round 1's pools from the seed files, streamed: the Train Pool is written as the seed file is read, the
    Cache Pool is the cache seeds followed by the Train Pool's rows it does not hold yet (ids only in memory)."""
    pc = ctx.cfg.pools
    who = None
    added = 0
    if pc.seed_answers == "teacher":
        from .answerstore import teacher_identity

        who = teacher_identity(ctx.cfg)

    def keep(id: str, answer: str) -> None:
        nonlocal added
        if who is not None and not ctx.answers.has(id, who):
            ctx.answers.put(id, who, answer, None, source="seed")
            added += 1

    check = token_check(ctx)
    train_report = LoadReport(source=pc.train_seed)
    write_pool(train_path, iter_instructions(pc.train_seed, pc.limit, train_report, check=check,
                                             on_reject=pc.too_long, on_answer=keep))
    reports = {"train_seed": train_report}
    if pc.cache_seed and pc.cache_seed != pc.train_seed:
        cache_report = LoadReport(source=pc.cache_seed)
        reports["cache_seed"] = cache_report
        # the Train Pool is always part of the Cache Pool
        cached = iter_instructions(pc.cache_seed, pc.limit, cache_report, check=check, on_reject=pc.too_long,
                                   on_answer=keep)
        n_cache = write_pool(cache_path, union_pools(cached, iter_pool(train_path)))
    else:
        n_cache = write_pool(cache_path, iter_pool(train_path))
    ctx.answers.commit()
    write_json(ctx.run.seed_report, {k: rep.to_json() for k, rep in reports.items()})
    for rep in reports.values():
        if rep.rejected:
            first = rep.examples[0]
            print(f"warning: pools: {rep.rejected} of the {rep.rows} rows of {rep.source} left out "
                  f"({', '.join(f'{n} {r}' for r, n in rep.reasons.items())}; first: {first['where']}: "
                  f"{first['detail'].split(';')[0]}); see {ctx.run.seed_report}", file=sys.stderr, flush=True)
        if rep.multi_turn:
            log.info("%s: %d multi-turn rows; only their first exchange is used", rep.source, rep.multi_turn)
    n_answers = sum(rep.n_answers for rep in reports.values())
    if who is not None:
        log.info("seed answers: %d of %d seed instructions come with an answer; %d recorded as the teacher's "
                 "(never bought)", n_answers, n_cache, added)
    elif n_answers:
        log.info("seed answers: %d seed instructions come with an answer, ignored (pools.seed_answers: ignore); the "
                 "teacher answers them", n_answers)


def seed_cache_pool(ctx: RunContext) -> Iterator[Instruction]:
    """Round 1's Cache Pool as the seed files give it (cache seeds, then the train seeds it lacks), streamed,
    without writing anything or recording seed answers."""
    pc = ctx.cfg.pools
    check = token_check(ctx)

    def seeds(spec: str) -> Iterator[Instruction]:
        return iter_instructions(spec, pc.limit, check=check, on_reject="skip")

    if pc.cache_seed and pc.cache_seed != pc.train_seed:
        return union_pools(seeds(pc.cache_seed), seeds(pc.train_seed))
    return seeds(pc.train_seed)


def prepare_round(ctx: RunContext, r: int) -> None:
    """Write round r's Train Pool and Cache Pool if they are not there yet (streamed: no pool is held in memory)."""
    rp = ctx.run.round(r)
    if rp.train_pool.exists() and rp.cache_pool.exists():
        return
    if r == 1:
        write_seed_pools(ctx, rp.train_pool, rp.cache_pool)
        return
    prev = ctx.run.round(r - 1)
    if not ctx.run.is_done(r - 1, "generation"):
        raise LionError(
            f"round {r} cannot start: round {r - 1}'s generation has not finished ({prev.done('generation')} missing)"
        )
    if not count_rows(prev.generated):
        raise LionError(
            f"round {r}: round {r - 1} generated no new instructions, so the Train Pool is empty; see {prev.rejected}"
        )
    write_pool(rp.cache_pool, union_pools(iter_pool(prev.cache_pool), iter_pool(prev.generated)))
    if ctx.cfg.pools.train_pool == "replace":
        write_pool(rp.train_pool, iter_pool(prev.generated))
    else:
        write_pool(rp.train_pool, union_pools(iter_pool(prev.train_pool), iter_pool(prev.generated)))


def _all_seed_rows(ctx: RunContext, on_answer: Callable[[str, str], None] | None = None) -> Iterator[Instruction]:
    """Every usable row of the seed files (pools.limit aside): the train seeds, then the cache seeds it lacks."""
    pc = ctx.cfg.pools
    check = token_check(ctx)
    parts = [iter_instructions(pc.train_seed, None, check=check, on_reject="skip", on_answer=on_answer)]
    if pc.cache_seed and pc.cache_seed != pc.train_seed:
        parts.append(iter_instructions(pc.cache_seed, None, check=check, on_reject="skip", on_answer=on_answer))
    return union_pools(*parts)


def used_ids(ctx: RunContext, exclude: Iterable[Path] = ()) -> IdSet:
    """The ids no fresh seed may have: every Train and Cache Pool of the run so far (round 1's as the seed files give
    it when it is not written yet), the files in `exclude` (pools of other tracks), and the evaluation's questions
    (held-out questions must stay out of every pool)."""
    ids = IdSet()
    first = ctx.run.round(1)
    pools = [p for rp in ctx.run.rounds() for p in (rp.train_pool, rp.cache_pool) if p.exists()]
    if not first.cache_pool.exists():
        for inst in seed_cache_pool(ctx):
            ids.add(inst.id)
    for path in [*pools, *(Path(p) for p in exclude if Path(p).exists())]:
        for inst in iter_pool(path):
            ids.add(inst.id)
    for q in ctx.heldout():
        ids.add(instruction_id(q.instruction))
    spec = ctx.cfg.eval.questions
    if spec and spec != "oracle" and Path(spec).is_file():
        from .questions import load_questions

        for q in load_questions(spec):
            ids.add(q.id)
    return ids


def count_unused_seeds(ctx: RunContext, exclude: Iterable[Path] = ()) -> int:
    """How many seed-file instructions no pool has used (see `used_ids`)."""
    used = used_ids(ctx, exclude)
    return sum(1 for inst in _all_seed_rows(ctx) if inst.id not in used)


def unused_seeds(ctx: RunContext, n: int, r: int, *, exclude: Iterable[Path] = (), salt: str = "unused",
                 on_answer: Callable[[str, str], None] | None = None) -> list[Instruction]:
    """`n` instructions of the seed files that no pool has used (`used_ids`: no Train or Cache Pool of the run so
    far, no file in `exclude`, no evaluation question), drawn at random, deterministically by (run seed, `salt`, r):
    the same inputs draw the same rows, in seed-file order. Fewer than n when fewer are left (the caller says what
    that means). Two streamed passes over the seed files: only the ids and the positions of the unused rows are
    held. `on_answer(id, answer)` receives the answers the drawn rows carry (pools.seed_answers)."""
    used = used_ids(ctx, exclude)
    positions = array.array("q", (k for k, inst in enumerate(_all_seed_rows(ctx)) if inst.id not in used))
    rng = random.Random(f"{ctx.cfg.seed}/{salt}/{r}")
    chosen = set(rng.sample(range(len(positions)), min(n, len(positions))))
    wanted = {positions[i] for i in chosen}
    pending: list[tuple[str, str]] = []
    out: list[Instruction] = []
    for k, inst in enumerate(_all_seed_rows(ctx, on_answer=lambda id, a: pending.append((id, a)))):
        answer = pending.pop() if pending and pending[-1][0] == inst.id else None
        pending.clear()
        if k in wanted:
            out.append(inst)
            if answer is not None and on_answer is not None:
                on_answer(inst.id, answer[1])
    return out
