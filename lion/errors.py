"""User-facing errors and the CLI wrapper that turns them into one clean line.

Every entry point (`python -m lion.run`, `lion.imitation`, ...) calls `cli_main(main, argv)`:
a `LionError` prints `error: <message>` on stderr and exits with status 2, no traceback;
a `BudgetExceeded` (subclass) exits with status 3 so scripts can tell "raise the cap" apart, and a
`TooManyFailures` (a phase had more failed calls than llm.max_failure_rate) with status 4.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


class LionError(Exception):
    """An error caused by the user's input (config, data files, run state). Message is shown as is."""

    exit_code = 2


class ConfigError(LionError):
    """A config key is unknown, has the wrong type or an impossible value. Message names the key."""


class DataError(LionError):
    """A data file is unreadable or has a bad row. Message names the file and line."""


class BudgetExceeded(LionError):
    """The spend cap would be exceeded. Everything done so far is kept; raise the cap and resume."""

    exit_code = 3


class ProviderError(LionError):
    """A permanent error from an LLM service (bad request, bad key, unknown model)."""


class TooManyFailures(LionError):
    """A phase's share of failed LLM calls exceeds llm.max_failure_rate: it stops without its .done marker."""

    exit_code = 4


def cli_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run `main(argv)`; user errors become one line on stderr and a non-zero exit status."""
    try:
        code = main(argv)
    except LionError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted: everything completed so far is saved; run the same command to resume", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
