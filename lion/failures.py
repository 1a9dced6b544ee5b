"""The failure gate of a phase: no phase finishes, and nothing is trained, on a silent hole.

    from lion.failures import check_failures
    check_failures(ctx.cfg, r, "imitation", "teacher answers to the Train Pool", failed=3, total=600)

Each phase counts the LLM calls it needed and could not get (after the gateway's retries) and calls
`check_failures` before it writes its `.done` marker. When the failed share exceeds `llm.max_failure_rate`
(default 1%) it raises `TooManyFailures` (exit status 4): the phase stops without its marker, and the message
says how to resume (run the same command again: completed calls replay from the cache, only the failed ones
are sent again) or how to accept the hole (raise llm.max_failure_rate). The failures themselves were already
shown by the gateway, one line per batch of calls, and are in RUN/gateway.log.
"""

from __future__ import annotations

from .config import LionConfig
from .errors import TooManyFailures


def check_failures(cfg: LionConfig, r: int, phase: str, what: str, failed: int, total: int,
                   consequence: str = "") -> None:
    """Raise TooManyFailures when failed / total exceeds llm.max_failure_rate."""
    if total <= 0 or failed <= 0:
        return
    rate, limit = failed / total, cfg.llm.max_failure_rate
    if rate <= limit:
        return
    raise TooManyFailures(
        f"round {r} {phase}: {failed} of {total} {what} failed ({rate:.1%}, more than llm.max_failure_rate "
        f"{limit:.1%}); the phase stops without {phase}.done{consequence}. The failures are shown above and in "
        f"{cfg.run_dir}/gateway.log. Run the same command again to retry them (completed calls replay from the "
        f"cache for free), or accept the hole with --set llm.max_failure_rate={min(1.0, round(rate + 0.005, 3))}"
    )
