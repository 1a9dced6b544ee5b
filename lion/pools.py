"""The Train Pool and the Cache Pool of each round.

Round 1's pools come from the seed files (`pools.train_seed`, `pools.cache_seed`, any format
`lion.records.load_instructions` reads). After round r's generation the new instructions N_r give

    Train Pool(r+1) = N_r                      (pools.train_pool: replace, the paper)
                    = Train Pool(r) ∪ N_r      (pools.train_pool: accumulate)
    Cache Pool(r+1) = Cache Pool(r) ∪ N_r

Each round's pools are written into its folder before any phase of it runs, so every phase (and a
resumed run) reads exactly the pools the round started with. Pools are streamed from file to file (only the
ids seen are kept, `lion.records.IdSet`), so a million-instruction pool never sits in memory.

With `pools.seed_answers: teacher`, the answers the seed files already hold (Alpaca `output`, a ShareGPT or
OpenAI chat's first assistant reply) are recorded in the answer store as the teacher's answers (marked
`"source": "seed"`) as the seed rows stream past, before round 1's pools are complete; the teacher is never
asked for those instructions (the train seed's answer wins when both seed files answer one instruction).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from .context import RunContext
from .errors import LionError
from .records import Instruction, LoadReport, count_rows, iter_instructions, iter_pool, union_pools, write_pool

log = logging.getLogger("lion.pools")


def write_seed_pools(ctx: RunContext, train_path: Path, cache_path: Path) -> None:
    """Round 1's pools from the seed files, streamed: the Train Pool is written as the seed file is read, the
    Cache Pool is the cache seeds followed by the Train Pool's rows it does not hold yet (ids only in memory)."""
    pc = ctx.cfg.pools
    who = None
    added = 0
    if pc.seed_answers == "teacher":
        from .answers import teacher_identity

        who = teacher_identity(ctx.cfg)

    def keep(id: str, answer: str) -> None:
        nonlocal added
        if who is not None and not ctx.answers.has(id, who):
            ctx.answers.put(id, who, answer, None, source="seed")
            added += 1

    train_report = LoadReport(source=pc.train_seed)
    write_pool(train_path, iter_instructions(pc.train_seed, pc.limit, train_report, on_answer=keep))
    reports = [train_report]
    if pc.cache_seed and pc.cache_seed != pc.train_seed:
        cache_report = LoadReport(source=pc.cache_seed)
        reports.append(cache_report)
        # the Train Pool is always part of the Cache Pool
        n_cache = write_pool(cache_path, union_pools(iter_instructions(pc.cache_seed, pc.limit, cache_report,
                                                                       on_answer=keep), iter_pool(train_path)))
    else:
        n_cache = write_pool(cache_path, iter_pool(train_path))
    ctx.answers.commit()
    for rep in reports:
        if rep.multi_turn:
            log.info("%s: %d multi-turn rows; only their first exchange is used", rep.source, rep.multi_turn)
    n_answers = sum(rep.n_answers for rep in reports)
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
    if pc.cache_seed and pc.cache_seed != pc.train_seed:
        return union_pools(iter_instructions(pc.cache_seed, pc.limit), iter_instructions(pc.train_seed, pc.limit))
    return iter_instructions(pc.train_seed, pc.limit)


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
