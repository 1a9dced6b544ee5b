"""Answers, the teacher's and the student's: one home for imitation, discrimination and evaluation.

    from lion.answers import teacher_answers, student_answers

- The teacher's answers are bought once per (instruction id, teacher identity) and kept in the run's answer
  store (RUN/teacher_answers.jsonl, indexed on disk by RUN/calls.answers.sqlite), so a later phase, round or
  evaluation uses an answer without even asking the gateway; the gateway's call cache would replay it anyway
  (same messages, same key). `buy_teacher_answers` streams a whole pool through the gateway's window.
- The student's answers are generated in batches and appended to a resumable file as each batch finishes;
  a restart generates only the missing ones. Each row says whether the answer was cut at
  `student.infer.max_new_tokens` (`"truncated": true`: no stop token within them; vLLM's or the server's
  finish_reason "length"), which discrimination counts and may exclude (`discrimination.truncated_student`). The student answers in this process (`LocalStudent`: transformers
  or vLLM) or through an inference server and the gateway (`student.infer.backend: server`, lion.student.serve).
An empty or failed teacher answer is never stored: it is None, and every caller counts and leaves it out.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .answerstore import AnswerStore, equivalent_identities, teacher_identity  # noqa: F401 - this module's interface
from .errors import DataError, LionError
from .prompts import teacher_request
from .records import Prompted, iter_jsonl_tolerant, repair_torn_tail
from .teachers.base import ChatRequest

if TYPE_CHECKING:
    from .phasectx import PhaseContext as RunContext
    from .student.infer import Completion


def teacher_messages(ctx: RunContext, item: Prompted) -> list[dict[str, str]]:
    """The chat the teacher answers: the teacher_system template, then the instruction (+ input)."""
    system = ctx.template("teacher_system").render()
    user = ctx.template("teacher").render(request=teacher_request(item.instruction, item.input))
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _stored(res: Any) -> bool:
    return bool(res.ok and res.text is not None and res.text.strip())


def buy_teacher_answers(ctx: RunContext, items: Iterable[Prompted], phase: str, *, total: int | None = None,
                        desc: str = "") -> dict[str, int]:
    """Buy the teacher's answer to every item the store lacks, streaming: items are read a gateway window at a
    time (chat_iter) and each answer is stored as its window completes, so neither the items nor the answers are
    held in memory.
    Returns {"asked", "stored", "failed"} (failed: no usable answer; counted, never stored)."""
    who = teacher_identity(ctx.cfg)
    store = ctx.answers
    waiting: dict[int, Prompted] = {}  # the requests in the gateway's window, by position in the stream

    def requests() -> Iterator[ChatRequest]:
        n = 0
        for it in items:
            if not store.has(it.id, who):
                waiting[n] = it
                n += 1
                yield ChatRequest(messages=teacher_messages(ctx, it))

    counts = {"asked": 0, "stored": 0, "failed": 0}
    try:
        for i, res in ctx.gateway.chat_iter("teacher", phase, requests(), desc=desc or f"teacher answers ({phase})",
                                            total=total):
            it = waiting.pop(i)
            counts["asked"] += 1
            if _stored(res) and not store.has(it.id, who):
                store.put(it.id, who, res.text.strip(), res.finish_reason, model=res.served_model,
                          fingerprint=res.fingerprint, logprobs=res.logprobs)
                counts["stored"] += 1
            elif not _stored(res):
                counts["failed"] += 1
    finally:
        store.commit()
    return counts


def teacher_answers(ctx: RunContext, items: Sequence[Prompted], phase: str) -> dict[str, str | None]:
    """The teacher's answer to every item (None where it failed), buying only the ones not in the store.
    Holds the answers of `items` in memory: for a whole pool, `buy_teacher_answers` then chunked reads."""
    buy_teacher_answers(ctx, items, phase, total=None)
    who = teacher_identity(ctx.cfg)
    out: dict[str, str | None] = {}
    for it in items:
        row = ctx.answers.get(it.id, who)
        out[it.id] = row["answer"] if row else None
    return out


class StudentBackend(Protocol):
    """How a student answers: `generate(items, on_answer, on_skip)` calls `on_answer(k, completion)` for each item k
    it answers (lion.student.infer.Completion: text, cut at max_new_tokens or not) and `on_skip(k, why)` for each it
    cannot (its prompt does not fit the student's context)."""

    settings: dict[str, Any]  # what decided the answers (lion.student.infer.inference_settings), for the record

    def generate(self, items: Sequence[Prompted], on_answer: Callable[[int, Completion], None],
                 on_skip: Callable[[int, str], None]) -> None: ...

    def close(self) -> None: ...


class LocalStudent:
    """The student in this process (transformers, or vLLM's offline engine): lion.student.infer.StudentSession."""

    def __init__(self, ctx: RunContext, model: str | Path) -> None:
        from .student.infer import StudentSession

        self.sc = ctx.cfg.student
        self.session = StudentSession(model, self.sc.infer, progress=ctx.progress, max_length=self.sc.max_length)
        self.settings = self.session.settings
        self.tokenizer = self.session.tokenizer if self.sc.prompt_format == "chat_template" else None

    def generate(self, items: Sequence[Prompted], on_answer: Callable[[int, Completion], None],
                 on_skip: Callable[[int, str], None]) -> None:
        from .student.data import format_prompt

        prompts = [format_prompt(it.instruction, it.input, fmt=self.sc.prompt_format, tokenizer=self.tokenizer)
                   for it in items]
        self.session.generate(prompts, on_answer=on_answer, on_skip=on_skip)

    def close(self) -> None:
        self.session.close()


def open_student(ctx: RunContext, model: str | Path, phase: str) -> StudentBackend:
    """The backend `student.infer.backend` names, for the student at `model`."""
    if not Path(model).exists():
        raise LionError(f"{model}: the student to answer with does not exist")
    if ctx.cfg.student.infer.backend == "server":
        from .student.serve import ServedStudent

        return ServedStudent(ctx, model, phase)
    return LocalStudent(ctx, model)


def read_truncated(path: Path) -> set[str]:
    """Ids whose student answer in `path` (a student answers file) was cut at max_new_tokens."""
    if not Path(path).exists():
        return set()
    return {str(row["id"]) for _, row in iter_jsonl_tolerant(Path(path)) if isinstance(row, dict) and row.get("truncated")}


class StudentAnswerer:
    """The answers of the student at `model`, appended to `path` ({"id", "answer", "truncated"} rows) as they are
    produced; `truncated`: cut at student.infer.max_new_tokens. After each `answer`, `truncated_ids` holds the ids of
    the items just answered whose answer was cut.

    An item whose prompt does not fit the student's context is recorded as {"id", "answer": null, "skipped": why}
    and answered None. Rows already in `path` from byte `resume_from` on are the answers of an interrupted run:
    they are used
    instead of generating again (a caller that consumed the file's earlier rows passes where they end, so only
    the rows since are read back). The backend opens on the first item that needs generating and stays open
    until `close`, so the model loads once however many chunks are asked."""

    def __init__(self, ctx: RunContext, model: str | Path, path: Path, *, phase: str, resume_from: int = 0) -> None:
        self.ctx, self.model, self.path, self.phase = ctx, model, Path(path), phase
        self.backend: StudentBackend | None = None
        self.pending: dict[str, str | None] = {}
        self.cut: set[str] = set()  # pending ids whose answer was cut at max_new_tokens
        self.truncated_ids: set[str] = set()
        self.settings: dict[str, Any] | None = None  # the backend's, once it has answered here
        repair_torn_tail(self.path)
        if self.path.exists():
            for offset, row in iter_jsonl_tolerant(self.path, start=resume_from):
                if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("answer"), (str, type(None))):
                    raise DataError(f"{self.path} (byte {offset}): a student answer row needs an id and an answer")
                self.pending[str(row["id"])] = row["answer"]
                if row.get("truncated"):
                    self.cut.add(str(row["id"]))
        self.generated = 0

    def answer(self, items: Sequence[Prompted]) -> dict[str, str | None]:
        """Every item's answer (generated now, or read back from `path`; None: skipped); they leave the answerer's
        memory."""
        todo = [it for it in items if it.id not in self.pending]
        if todo:
            if self.backend is None:
                self.backend = open_student(self.ctx, self.model, self.phase)
                self.settings = self.backend.settings
            skipped: list[str] = []
            with self.path.open("a", encoding="utf-8") as f:
                def write(row: dict[str, Any]) -> None:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    f.flush()
                    self.pending[row["id"]] = row["answer"]
                    if row.get("truncated"):
                        self.cut.add(row["id"])

                def keep(k: int, answer: Completion) -> None:
                    write({"id": todo[k].id, "answer": answer.text, "truncated": answer.truncated})

                def skip(k: int, why: str) -> None:
                    write({"id": todo[k].id, "answer": None, "skipped": why})
                    skipped.append(f"{todo[k].id} ({why})")

                self.backend.generate(todo, keep, skip)
            self.generated += len(todo)
            if skipped:
                print(f"warning: the student skipped {len(skipped)} of {len(todo)} prompts that do not fit its "
                      f"context, e.g. {skipped[0]}; recorded in {self.path}", file=sys.stderr, flush=True)
        missing = [it.id for it in items if it.id not in self.pending]
        if missing:
            raise LionError(f"the student at {self.model} gave no answer for {len(missing)} items "
                            f"(first: {missing[0]}); see the messages above")
        self.truncated_ids = {it.id for it in items if it.id in self.cut}
        self.cut -= self.truncated_ids
        return {it.id: self.pending.pop(it.id) for it in items}

    def end_offset(self) -> int:
        """Bytes of `path` so far: where the rows of a later chunk will start."""
        return self.path.stat().st_size if self.path.exists() else 0

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    def __enter__(self) -> StudentAnswerer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def student_answers(ctx: RunContext, model: str | Path, items: Sequence[Prompted], path: Path, *,
                    phase: str = "student") -> dict[str, str | None]:
    """The answers of the student at `model` to every item, resumable: `path` holds {"id", "answer", "truncated"}
    rows, appended as they are produced; only the items not in it yet are generated. An item whose prompt does not
    fit the student's context is recorded as {"id", "answer": null, "skipped": why} and answered None."""
    with StudentAnswerer(ctx, model, path, phase=phase) as sa:
        return sa.answer(items)
