"""What the helpers of a phase ask of the run's context: a small Protocol, so they need not import lion.context.

    from lion.phasectx import PhaseContext      # lion.answers, lion.pools, lion.student.serve type their `ctx` with it

`lion.context.RunContext` is the one implementation (the config, the run directory, the gateway, the answer store,
the templates, the offline world's held-out questions); modules that RunContext itself uses (the answer and pool
helpers) take this Protocol instead, so the dependency runs one way: context -> them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .answerstore import AnswerStore
    from .config import LionConfig
    from .prompts import Template
    from .rundir import RunDir
    from .world import HeldOutQuestion


class PhaseContext(Protocol):
    cfg: LionConfig
    run: RunDir
    progress: bool

    @property
    def gateway(self) -> Any: ...  # lion.teachers.gateway.Gateway

    @property
    def answers(self) -> AnswerStore: ...

    def template(self, name: str) -> Template: ...

    def heldout(self) -> list[HeldOutQuestion]: ...
