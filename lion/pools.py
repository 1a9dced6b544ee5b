"""The Train Pool and the Cache Pool of each round.

Round 1's pools come from the seed files (`pools.train_seed`, `pools.cache_seed`, any format
`lion.records.load_instructions` reads). After round r's generation the new instructions N_r give

    Train Pool(r+1) = N_r                      (pools.train_pool: replace, the paper)
                    = Train Pool(r) ∪ N_r      (pools.train_pool: accumulate)
    Cache Pool(r+1) = Cache Pool(r) ∪ N_r

Each round's pools are written into its folder before any phase of it runs, so every phase (and a
resumed run) reads exactly the pools the round started with. Pools are streamed from file to file (only the
ids seen are kept, `lion.records.IdSet`), so a million-instruction pool never sits in memory.
"""

from __future__ import annotations

from pathlib import Path

from .context import RunContext
from .errors import LionError
from .records import count_rows, iter_instructions, iter_pool, union_pools, write_pool


def write_seed_pools(ctx: RunContext, train_path: Path, cache_path: Path) -> None:
    """Round 1's pools from the seed files, streamed: the Train Pool is written as the seed file is read, the
    Cache Pool is the cache seeds followed by the Train Pool's rows it does not hold yet (ids only in memory)."""
    pc = ctx.cfg.pools
    write_pool(train_path, iter_instructions(pc.train_seed, pc.limit))
    if pc.cache_seed and pc.cache_seed != pc.train_seed:
        # the Train Pool is always part of the Cache Pool
        write_pool(cache_path, union_pools(iter_instructions(pc.cache_seed, pc.limit), iter_pool(train_path)))
    else:
        write_pool(cache_path, iter_pool(train_path))


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
