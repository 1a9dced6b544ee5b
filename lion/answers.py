"""Answers, the teacher's and the student's: one home for imitation, discrimination and evaluation.

    from lion.answers import teacher_answers, student_answers

- The teacher's answers are bought once per (instruction id, teacher identity) and kept in the run's answer
  store (RUN/teacher_answers.jsonl), so a later phase, round or evaluation uses an answer without even asking
  the gateway; the gateway's call cache would replay it anyway (same messages, same key).
- The student's answers are generated in batches and appended to a resumable file as each batch finishes;
  a restart generates only the missing ones.
An empty or failed teacher answer is never stored: it is None, and every caller counts and leaves it out.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .config import LionConfig
from .errors import LionError
from .prompts import teacher_request
from .records import append_jsonl, read_jsonl_tolerant
from .teachers.base import ChatRequest

if TYPE_CHECKING:
    from .context import RunContext


class Prompted(Protocol):
    """Anything with an id and an instruction (+ input): pool Instructions, evaluation questions."""

    id: str
    instruction: str
    input: str


class AnswerStore:
    """Teacher answers per (instruction id, teacher identity), append-only, shared by all phases and rounds."""

    def __init__(self, path: Path):
        self.path = path
        self._answers: dict[tuple[str, str], dict[str, Any]] = {}
        if path.exists():
            for row in read_jsonl_tolerant(path):
                self._answers[(row["id"], row["teacher"])] = row

    def get(self, id: str, teacher: str) -> dict[str, Any] | None:
        return self._answers.get((id, teacher))

    def put(self, id: str, teacher: str, answer: str, finish_reason: str | None, *, source: str | None = None) -> None:
        """Record an answer; `source="seed"` marks one taken from the seed file (pools.seed_answers: teacher),
        never bought."""
        row = {"id": id, "teacher": teacher, "answer": answer, "finish_reason": finish_reason}
        if source is not None:
            row["source"] = source
        self._answers[(id, teacher)] = row
        append_jsonl(self.path, row)

    def seed(self, answers: dict[str, str], teacher: str) -> int:
        """Record seed-file answers as `teacher`'s (those it does not hold yet); returns how many were added."""
        added = 0
        for id, answer in answers.items():
            if (id, teacher) not in self._answers:
                self.put(id, teacher, answer, None, source="seed")
                added += 1
        return added


def teacher_identity(cfg: LionConfig) -> str:
    """Who answered: the teacher's model and sampling settings (a different teacher = new answers)."""
    t = cfg.llm.teacher
    return f"{t.provider}|{t.model}|t={t.temperature}|p={t.top_p}|max={t.max_tokens}"


def teacher_messages(ctx: RunContext, item: Prompted) -> list[dict[str, str]]:
    """The chat the teacher answers: the teacher_system template, then the instruction (+ input)."""
    system = ctx.template("teacher_system").render()
    user = ctx.template("teacher").render(request=teacher_request(item.instruction, item.input))
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def teacher_answers(ctx: RunContext, items: Sequence[Prompted], phase: str) -> dict[str, str | None]:
    """The teacher's answer to every item (None where it failed), buying only the ones not in the store."""
    who = teacher_identity(ctx.cfg)
    missing = [it for it in items if ctx.answers.get(it.id, who) is None]
    if missing:
        results = ctx.gateway.chat_many(
            "teacher",
            phase,
            [ChatRequest(messages=teacher_messages(ctx, it)) for it in missing],
            desc=f"teacher answers ({phase})",
        )
        for it, res in zip(missing, results, strict=True):
            if res.ok and res.text is not None and res.text.strip():
                ctx.answers.put(it.id, who, res.text.strip(), res.finish_reason)
    out: dict[str, str | None] = {}
    for it in items:
        row = ctx.answers.get(it.id, who)
        out[it.id] = row["answer"] if row else None
    return out


def student_answers(
    ctx: RunContext, model: str | Path, items: Sequence[Prompted], path: Path
) -> dict[str, str | None]:
    """The answers of the student at `model` to every item, resumable: `path` holds {"id", "answer"} rows,
    appended as they are produced; only the items not in it yet are generated. An item whose prompt does not
    fit the student's context is recorded as {"id", "answer": null, "skipped": why} and answered None."""
    done: dict[str, str | None] = {}
    if path.exists():
        done = {
            str(row["id"]): None if row.get("answer") is None else str(row["answer"])
            for row in read_jsonl_tolerant(path)
        }
    todo = [it for it in items if it.id not in done]
    if todo:
        if not Path(model).exists():
            raise LionError(f"{model}: the student to answer with does not exist")
        from .student.data import format_prompt
        from .student.infer import generate, load_prompt_tokenizer

        sc = ctx.cfg.student
        tokenizer = load_prompt_tokenizer(model) if sc.prompt_format == "chat_template" else None
        prompts = [format_prompt(it.instruction, it.input, fmt=sc.prompt_format, tokenizer=tokenizer) for it in todo]

        def keep(i: int, answer: str) -> None:
            append_jsonl(path, {"id": todo[i].id, "answer": answer})
            done[todo[i].id] = answer

        skipped: list[str] = []

        def skip(i: int, why: str) -> None:
            append_jsonl(path, {"id": todo[i].id, "answer": None, "skipped": why})
            done[todo[i].id] = None
            skipped.append(f"{todo[i].id} ({why})")

        generate(model, prompts, sc.infer, progress=ctx.progress, on_answer=keep, on_skip=skip,
                 max_length=sc.max_length)
        if skipped:
            print(f"warning: the student skipped {len(skipped)} of {len(todo)} prompts that do not fit its context, "
                  f"e.g. {skipped[0]}; recorded in {path}", file=sys.stderr, flush=True)
    return {it.id: done[it.id] for it in items}
