"""The failure gates of a phase: no phase finishes, and nothing is trained, on a silent hole.

    from lion.failures import check_failures, check_unparsed
    check_failures(ctx.cfg, r, "imitation", "teacher answers to the Train Pool", failed=3, total=600)
    check_unparsed(ctx.cfg, r, "discrimination", "referee pairs", unparsed=40, total=4096, ...)

Each phase counts the LLM calls it needed and could not get (after the gateway's retries) and calls
`check_failures` before it writes its `.done` marker. When the failed share exceeds `llm.max_failure_rate`
(default 1%) it raises `TooManyFailures` (exit status 4): the phase stops without its marker, and the message
says how to resume (run the same command again: completed calls replay from the cache, only the failed ones
are sent again) or how to accept the hole (raise llm.max_failure_rate). The failures themselves were already
shown by the gateway, one line per batch of calls, and are in RUN/gateway.log.

`check_unparsed` is the same gate for the pairs a referee or judge answered but whose verdict could not be read
after every try (excluded, never a number): above `llm.max_unparsed_rate` (default 5%) the phase stops the same
way. A re-run replays those very replies from the cache, so the message names what changes the outcome (more
tries, another model or prompt) and where the replies are. The evaluation (`lion.evaluate`) gates its judge's
calls and verdicts alike, stopping without its summary.json.
"""

from __future__ import annotations

from .config import LionConfig
from .errors import TooManyFailures


def _over(bad: int, total: int, limit: float) -> float | None:
    """bad / total where it exceeds `limit`, else None (nothing bad, or within the limit)."""
    if total <= 0 or bad <= 0 or bad / total <= limit:
        return None
    return bad / total


def check_failures(cfg: LionConfig, r: int | None, phase: str, what: str, failed: int, total: int,
                   consequence: str = "", *, where: str | None = None, marker: str | None = None) -> None:
    """Raise TooManyFailures when failed / total exceeds llm.max_failure_rate. `where` / `marker` name the step
    and what it stops without (default: "round r phase" and phase.done)."""
    limit = cfg.llm.max_failure_rate
    if (rate := _over(failed, total, limit)) is None:
        return
    raise TooManyFailures(
        f"{where or f'round {r} {phase}'}: {failed} of {total} {what} failed ({rate:.1%}, more than "
        f"llm.max_failure_rate {limit:.1%}); the phase stops without {marker or f'{phase}.done'}{consequence}. The "
        f"failures are shown above and in {cfg.run_dir}/gateway.log. Run the same command again to retry them "
        f"(completed calls replay from the cache for free), or accept the hole with "
        f"--set llm.max_failure_rate={_accept(rate)}"
    )


def check_unparsed(cfg: LionConfig, r: int | None, phase: str, what: str, unparsed: int, total: int, *,
                   replies: str, remedy: str, where: str | None = None, marker: str | None = None) -> None:
    """Raise TooManyFailures when the share of pairs left without a readable verdict exceeds llm.max_unparsed_rate.
    `replies`: where the raw replies are; `remedy`: what changes the outcome (a re-run replays the same replies)."""
    limit = cfg.llm.max_unparsed_rate
    if (rate := _over(unparsed, total, limit)) is None:
        return
    raise TooManyFailures(
        f"{where or f'round {r} {phase}'}: {unparsed} of {total} {what} got no readable verdict after every try "
        f"({rate:.1%}, more than llm.max_unparsed_rate {limit:.1%}); the phase stops without "
        f"{marker or f'{phase}.done'}. The replies are in {replies}; a re-run replays them from the cache, so "
        f"{remedy} (docs/judging.md), or accept the hole with --set llm.max_unparsed_rate={_accept(rate)}"
    )


def _accept(rate: float) -> float:
    """The limit that lets `rate` pass, with a little room, as the message suggests it."""
    return min(1.0, round(rate + 0.005, 3))
