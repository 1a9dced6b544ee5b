"""The Train Pool and the Cache Pool of each round.

Round 1's pools come from the seed files (`pools.train_seed`, `pools.cache_seed`, any format
`lion.records.load_instructions` reads). After round r's generation the new instructions N_r give

    Train Pool(r+1) = N_r                      (pools.train_pool: replace, the paper)
                    = Train Pool(r) ∪ N_r      (pools.train_pool: accumulate)
    Cache Pool(r+1) = Cache Pool(r) ∪ N_r

Each round's pools are written into its folder before any phase of it runs, so every phase (and a
resumed run) reads exactly the pools the round started with.

With `pools.seed_answers: teacher`, the answers the seed files already hold (Alpaca `output`, a ShareGPT or
OpenAI chat's first assistant reply) are recorded in the answer store as the teacher's answers (marked
`"source": "seed"`), before round 1's pools are written; the teacher is never asked for those instructions.
"""

from __future__ import annotations

import logging

from .context import RunContext
from .errors import LionError
from .records import Instruction, load_instructions, read_pool, write_pool

log = logging.getLogger("lion.pools")


def _union(a: list[Instruction], b: list[Instruction]) -> list[Instruction]:
    seen = {i.id for i in a}
    return a + [i for i in b if i.id not in seen and not seen.add(i.id)]  # type: ignore[func-returns-value]


def seed_pools(ctx: RunContext) -> tuple[list[Instruction], list[Instruction]]:
    pc = ctx.cfg.pools
    train, report = load_instructions(pc.train_seed, pc.limit)
    answers = dict(report.answers)
    if report.multi_turn:
        log.info("%s: %d multi-turn rows; only their first exchange is used", pc.train_seed, report.multi_turn)
    if pc.cache_seed and pc.cache_seed != pc.train_seed:
        cache, cache_report = load_instructions(pc.cache_seed, pc.limit)
        answers = {**cache_report.answers, **answers}
        cache = _union(cache, train)  # the Train Pool is always part of the Cache Pool
    else:
        cache = list(train)
    if pc.seed_answers == "teacher":
        from .answers import teacher_identity

        added = ctx.answers.seed(answers, teacher_identity(ctx.cfg))
        log.info("seed answers: %d of %d seed instructions come with an answer; %d recorded as the teacher's "
                 "(never bought)", len(answers), len(cache), added)
    elif answers:
        log.info("seed answers: %d seed instructions come with an answer, ignored (pools.seed_answers: ignore); the "
                 "teacher answers them", len(answers))
    return train, cache


def prepare_round(ctx: RunContext, r: int) -> None:
    """Write round r's Train Pool and Cache Pool if they are not there yet."""
    rp = ctx.run.round(r)
    if rp.train_pool.exists() and rp.cache_pool.exists():
        return
    if r == 1:
        train, cache = seed_pools(ctx)
    else:
        prev = ctx.run.round(r - 1)
        if not ctx.run.is_done(r - 1, "generation"):
            raise LionError(
                f"round {r} cannot start: round {r - 1}'s generation has not finished ({prev.done('generation')} missing)"
            )
        new = read_pool(prev.generated)
        old_train, old_cache = read_pool(prev.train_pool), read_pool(prev.cache_pool)
        train = new if ctx.cfg.pools.train_pool == "replace" else _union(old_train, new)
        cache = _union(old_cache, new)
        if not train:
            raise LionError(
                f"round {r}: round {r - 1} generated no new instructions, so the Train Pool is empty; "
                f"see {prev.rejected}"
            )
    write_pool(rp.cache_pool, cache)
    write_pool(rp.train_pool, train)
