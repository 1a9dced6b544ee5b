"""The evaluation's questions: a FastChat question.jsonl (first turn), our JSONL, or "oracle" (the offline world's
held-out questions).

    from lion.questions import load_questions     # lion.evaluate, and lion.pools (no seed row may be a question)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ConfigError
from .prompts import teacher_request
from .records import instruction_id, load_instructions
from .world import HeldOutQuestion

ORACLE = "oracle"


@dataclass
class EvalQuestion:
    id: str
    instruction: str
    input: str = ""
    category: str = ""
    question_id: str | None = None  # FastChat question_id (joins with FastChat answer files)
    truth: str | None = None  # offline world: the exact answer

    @property
    def text(self) -> str:
        return teacher_request(self.instruction, self.input)


def load_questions(
    spec: str, *, heldout: Sequence[HeldOutQuestion] = (), limit: int | None = None
) -> list[EvalQuestion]:
    """FastChat question.jsonl (first turn), our JSONL, or "oracle": the offline world's held-out questions
    (`RunContext.heldout()`)."""
    if spec == ORACLE:
        if not heldout:
            raise ConfigError('eval.questions: "oracle" needs the offline world (sim.enabled: true)')
        qs = [
            EvalQuestion(id=instruction_id(h.instruction), instruction=h.instruction, category=h.family, truth=h.answer)
            for h in heldout
        ]
    else:
        insts, _ = load_instructions(spec)
        qs = []
        for i in insts:
            qid = i.meta.get("question_id")
            qs.append(
                EvalQuestion(
                    id=i.id,
                    instruction=i.instruction,
                    input=i.input,
                    category=str(i.meta.get("category") or i.meta.get("family") or ""),
                    question_id=None if qid is None else str(qid),
                )
            )
    return qs[:limit] if limit else qs
