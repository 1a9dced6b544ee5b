"""The Train Pool and the Cache Pool of each round.

Round 1's pools come from the seed files (`pools.train_seed`, `pools.cache_seed`, any format
`lion.records.load_instructions` reads). After round r's generation the new instructions N_r give

    Train Pool(r+1) = N_r                      (pools.train_pool: replace, the paper)
                    = Train Pool(r) ∪ N_r      (pools.train_pool: accumulate)
    Cache Pool(r+1) = Cache Pool(r) ∪ N_r

Seed rows longer than `pools.max_instruction_tokens` tokens of the student's tokenizer (default:
student.max_length) are left out and counted (`pools.too_long: skip`), or stop the run naming file:line
(`error`); RUN/seed_report.json holds what was read, merged and rejected.
Each round's pools are written into its folder before any phase of it runs, so every phase (and a
resumed run) reads exactly the pools the round started with.

With `pools.seed_answers: teacher`, the answers the seed files already hold (Alpaca `output`, a ShareGPT or
OpenAI chat's first assistant reply) are recorded in the answer store as the teacher's answers (marked
`"source": "seed"`), before round 1's pools are written; the teacher is never asked for those instructions.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from .context import RunContext
from .errors import ConfigError, LionError
from .records import Instruction, RowCheck, load_instructions, read_pool, write_json, write_pool

log = logging.getLogger("lion.pools")


def _union(a: list[Instruction], b: list[Instruction]) -> list[Instruction]:
    seen = {i.id for i in a}
    return a + [i for i in b if i.id not in seen and not seen.add(i.id)]  # type: ignore[func-returns-value]


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


def seed_pools(ctx: RunContext) -> tuple[list[Instruction], list[Instruction]]:
    pc = ctx.cfg.pools
    check = token_check(ctx)
    train, report = load_instructions(pc.train_seed, pc.limit, check=check, on_reject=pc.too_long)
    reports = {"train_seed": report.to_json()}
    answers = dict(report.answers)
    if report.multi_turn:
        log.info("%s: %d multi-turn rows; only their first exchange is used", pc.train_seed, report.multi_turn)
    if pc.cache_seed and pc.cache_seed != pc.train_seed:
        cache, cache_report = load_instructions(pc.cache_seed, pc.limit, check=check, on_reject=pc.too_long)
        reports["cache_seed"] = cache_report.to_json()
        answers = {**cache_report.answers, **answers}
        cache = _union(cache, train)  # the Train Pool is always part of the Cache Pool
    else:
        cache = list(train)
    write_json(ctx.run.seed_report, reports)
    for rep in reports.values():
        if rep["rejected"]:
            first = rep["examples"][0]
            print(f"warning: pools: {rep['rejected']} of the {rep['rows']} rows of {rep['source']} left out "
                  f"({', '.join(f'{n} {r}' for r, n in rep['reasons'].items())}; first: {first['where']}: "
                  f"{first['detail'].split(';')[0]}); see {ctx.run.seed_report}", file=sys.stderr, flush=True)
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
