"""What an offline world offers the loop besides answering: exact grading, and questions held out of every pool.

    from lion.world import World, family_accuracy

A real run has no world (`RunContext.world is None`): teachers, referees and generators are LLMs and nothing
knows the truth. The offline world (`sim.enabled`, lion.sim) does: its responder may offer a `World`, which the
run context picks up where it starts the simulator, so the loop's modules grade through this protocol and never
import the simulator. `family_accuracy` is the one implementation of "exact accuracy per task family".
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Grader(Protocol):
    def family(self, instruction: str) -> str | None:
        """The task family of an instruction, or None when it is not a task of this world."""
        ...

    def grade(self, instruction: str, answer: str) -> bool | None:
        """Is `answer` exactly right? None when the instruction is not a task of this world."""
        ...


@dataclass(frozen=True)
class HeldOutQuestion:
    instruction: str
    family: str
    answer: str


@runtime_checkable
class World(Grader, Protocol):
    name: str

    def heldout(self, per_family: int, seed: int, exclude: Collection[str] = ()) -> list[HeldOutQuestion]:
        """`per_family` questions of every family, none of them in `exclude` (the seed pool): with generation
        rejecting held-out questions, no pool ever holds one."""
        ...


def family_accuracy(grader: Grader, pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Exact accuracy per family of (instruction, answer) pairs; instructions the grader does not know are skipped.

    Returns {"accuracy": {family: float}, "n": {family: int}, "overall": float | None} (families sorted)."""
    per: dict[str, list[int]] = {}
    for instruction, answer in pairs:
        ok = grader.grade(instruction, answer)
        family = grader.family(instruction) if ok is not None else None
        if family is None:
            continue
        per.setdefault(family, []).append(1 if ok else 0)
    n = sum(len(v) for v in per.values())
    return {
        "accuracy": {f: sum(v) / len(v) for f, v in sorted(per.items())},
        "n": {f: len(v) for f, v in sorted(per.items())},
        "overall": sum(sum(v) for v in per.values()) / n if n else None,
    }
