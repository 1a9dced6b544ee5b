"""What one LLM call costs: `llm.prices` (USD per million tokens) and the providers' prompt-cache rates.

    from lion.teachers.pricing import price_usd, tokens_usd, cache_rates
    price_usd(cfg.llm.prices.get(model), response, "online", model)      # the gateway's ledger
    tokens_usd(cfg.llm.prices.get(model), model, prompt, completion)       # lion.plan: the same rule

Prompt tokens read from the provider's prompt cache and written to it are priced apart: at
`llm.prices.<model>.cached_input` / `cache_write` when the config sets them, else at the share of the input price
that `CACHE_RATES` gives the model's family, else — a model this table does not know — at the full input price for
reads (never undercounted; `lion.plan` names such models) and 125% of it for writes (Anthropic's 5-minute cache).

To update: edit CACHE_RATES (the first pattern matching the start of the model's name, after any router prefix
such as `openai/`, wins: more specific patterns first), naming the page and the date in SOURCES.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from ..config import Price
from .base import ChatResponse

# The pages the rates below were read from, and when. Re-check them and edit the table when they change.
SOURCES = {
    "openai": "OpenAI API pricing, https://platform.openai.com/docs/pricing (cached input column), as of 2025-08",
    "anthropic": "Anthropic pricing, https://docs.anthropic.com/en/docs/about-claude/pricing (cache hits 0.1x, "
                 "5-minute cache writes 1.25x base input; 1-hour writes 2x), as of 2025-08",
}

# model name (after any router prefix) matched from its start by each pattern in turn; the first match gives
# (cached input as a share of input, cache write as a share of input or None, source). 1.0: no cached-input discount.
CACHE_RATES: dict[str, tuple[float, float | None, str]] = {
    r"gpt-5(\.\d+)?-pro": (1.0, None, "openai"),
    r"gpt-5": (0.10, None, "openai"),  # gpt-5 $1.25 / cached $0.125; gpt-5-mini $0.25 / $0.025; gpt-5-nano; gpt-5.x
    r"gpt-4\.1": (0.25, None, "openai"),  # gpt-4.1 $2.00 / $0.50; -mini $0.40 / $0.10; -nano $0.10 / $0.025
    r"gpt-4o": (0.50, None, "openai"),  # gpt-4o $2.50 / $1.25; gpt-4o-mini $0.15 / $0.075
    r"o[13]-pro": (1.0, None, "openai"),
    r"o1": (0.50, None, "openai"),  # o1 $15 / $7.50; o1-mini $1.10 / $0.55
    r"o3-mini": (0.50, None, "openai"),  # $1.10 / $0.55
    r"o3": (0.25, None, "openai"),  # $2.00 / $0.50
    r"o4-mini": (0.25, None, "openai"),  # $1.10 / $0.275
    r"claude-": (0.10, 1.25, "anthropic"),  # every Claude model: reads 0.1x, 5-minute writes 1.25x
}

UNKNOWN_READ, UNKNOWN_WRITE = 1.0, 1.25  # a model the table does not know: reads never undercounted


class CacheRates(NamedTuple):
    cached_input: float  # USD per million prompt tokens read from the cache
    cache_write: float  # USD per million prompt tokens written to it
    source: str  # a SOURCES key, "config" (llm.prices sets cached_input), or "unknown"


def _family(model: str) -> tuple[float, float | None, str] | None:
    name = model.rsplit("/", 1)[-1].lower()
    return next((rates for pattern, rates in CACHE_RATES.items() if re.match(pattern, name)), None)


def cache_rates(model: str, price: Price) -> CacheRates:
    """The USD-per-million rates of cache reads and writes for `model` at `price`: the config's own, else its
    family's share of the input price (CACHE_RATES), else the full input price (reads) and 125% (writes)."""
    family = _family(model)
    read_share, write_share, source = family if family is not None else (UNKNOWN_READ, None, "unknown")
    write_share = write_share if write_share is not None else UNKNOWN_WRITE
    read = price.cached_input if price.cached_input is not None else read_share * price.input
    write = price.cache_write if price.cache_write is not None else write_share * price.input
    return CacheRates(read, write, "config" if price.cached_input is not None else source)


def price_usd(price: Price | None, resp: ChatResponse, mode: str = "online", model: str = "") -> float:
    """USD of one billed reply: plain prompt tokens, prompt-cache reads and writes and completion tokens at their own
    rates (`cache_rates`), times `batch_discount` in batch mode. No price: 0."""
    return tokens_usd(price, model, resp.prompt_tokens, resp.completion_tokens, resp.cached_tokens,
                      resp.cache_write_tokens, mode)


def tokens_usd(price: Price | None, model: str, prompt: float, completion: float, cached: float = 0.0,
               cache_write: float = 0.0, mode: str = "online") -> float:
    """USD of token counts (`prompt` includes the cache reads and writes); the rule of `price_usd`, for the plan's
    fractional counts too."""
    if price is None:
        return 0.0
    rates = cache_rates(model, price)
    read = max(0.0, min(cached, prompt))
    write = max(0.0, min(cache_write, prompt - read))
    plain = prompt - read - write
    usd = (plain * price.input + read * rates.cached_input + write * rates.cache_write
           + completion * price.output) / 1e6
    return usd * (price.batch_discount if mode == "batch" else 1.0)


def pricing_notes(prices: dict[str, Price], models: list[str]) -> list[str]:
    """One line per priced model the run uses: how its prompt-cache reads are priced (for lion.plan)."""
    out = []
    for model in dict.fromkeys(models):
        price = prices.get(model)
        if price is None:
            continue
        rates = cache_rates(model, price)
        if price.cached_input is not None:
            continue  # the config's own rate: nothing to explain
        if rates.source == "unknown":
            out.append(f"{model}: no cached-input rate known, so prompt-cache reads are priced at the full input price "
                       f"(never undercounted); set llm.prices.{model}.cached_input to its provider's rate")
        elif price.input:
            out.append(f"{model}: prompt-cache reads at {rates.cached_input / price.input:.0%} of input "
                       f"(${rates.cached_input:g}/M; {SOURCES[rates.source].split(',')[0]}, lion.teachers.pricing)")
    return out
