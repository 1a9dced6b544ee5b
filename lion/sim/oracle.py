"""The oracle responder: an offline LLM that knows the truth of the synthetic task world.

    python -m lion.sim.server --responder oracle            # serve it (OpenAI-compatible, 127.0.0.1)
    python -m lion.sim.oracle --demo                        # print one request/reply of every role

It plays every role of the loop through OUR prompt templates (prompts/*.txt), reading each request the way a
model would: the kind of request is found by matching the messages against the templates themselves
(`Template.extract`), never by strings copied out of them, so an edited template is followed automatically,
and a request that no template explains is refused loudly with an error that names the closest template.

- teacher (system prompt = teacher_system, user = teacher): the exact answer of the task; a plausible generic
  reply for an instruction outside the task world.
- referee (user = referee): scores both responses by correctness against the truth (`correct_score` /
  `wrong_score`, plus partial credit by character similarity), adds gaussian noise (`referee_noise`, the std)
  and a first-position bias (`position_bias`, points added to response A), clips to 1..10 and ends with the
  verdict in the format the referee template declares (`fastchat`: the two scores on the first line; `lion`: the
  template's own verdict line, filled in).
- generator (user = generate_hard / generate_easy): hard -> a new instance of the seed's family at difficulty
  ±1; easy -> the same domain, a different and rarer family. Replies with the marker the template asks for
  (`TASK: ...`).

Every reply is a pure function of (seed, request body), so cache replay and resume are reproducible.
Options (config `sim.options`): seed, prompts_dir, referee_noise, position_bias, correct_score, wrong_score,
partial_credit, judge_prompts (FastChat-style prompt files the referee also answers, in their verdict format;
the run passes eval.judge_prompts and discrimination.referee_prompts), world (a world file, lion.sim.tasks
`load_world`; the run passes `sim.world`): its families, their rarity and difficulty range, its referee (which
then must not be set again through the referee options) and its generator's fidelity.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import random
import re
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError, LionError
from ..judge_prompts import load_judge_prompts
from ..prompts import PLACEHOLDER, Template, load_template, reply_marker, teacher_request
from . import tasks as world
from .tasks import RefereeSpec, TaskWorld, load_world

GENERATOR_KINDS = ("generate_hard", "generate_easy")
REFEREE_OPTIONS = {"referee_noise": "noise", "position_bias": "position_bias", "correct_score": "correct_score",
                   "wrong_score": "wrong_score", "partial_credit": "partial_credit"}  # option -> RefereeSpec field
KNOWN_OPTIONS = ("seed", "prompts_dir", *REFEREE_OPTIONS, "judge_prompts", "world")


class PromptMismatch(LionError):
    """A request that none of the oracle's templates explains (e.g. rendered from an edited template)."""


class OracleResponder:
    """`respond(body) -> str` for lion.sim.server; see the module docstring. Offers the loop its world
    (`self.world`, a lion.world.World): exact grading and held-out questions."""

    world: TaskWorld

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(KNOWN_OPTIONS))
        if unknown:
            raise ConfigError(
                f"sim.options.{unknown[0]}: unknown option of the oracle responder (known: {', '.join(KNOWN_OPTIONS)})"
            )
        self.world = load_world(options.get("world"))
        self.seed = int(options.get("seed", 0))
        ref = self.world.referee
        if ref is not None:  # the world file sets the referee: one place only
            twice = sorted(set(options) & set(REFEREE_OPTIONS))
            if twice:
                raise ConfigError(f"sim.options.{twice[0]}: the world file {self.world.source} sets the referee "
                                  f"(referee.{REFEREE_OPTIONS[twice[0]]}); set it in one place")
        else:
            ref = RefereeSpec(**{field: options[opt] for opt, field in REFEREE_OPTIONS.items() if opt in options})
        self.referee_noise = float(ref.noise)
        self.position_bias = float(ref.position_bias)
        self.correct_score = int(ref.correct_score)
        self.wrong_score = int(ref.wrong_score)
        self.partial_credit = bool(ref.partial_credit)
        if self.referee_noise < 0:
            raise ConfigError(f"sim.options.referee_noise: must be >= 0, got {self.referee_noise}")
        if not 1 <= self.wrong_score <= self.correct_score <= 10:
            raise ConfigError(
                f"sim.options.correct_score/wrong_score: need 1 <= wrong_score <= correct_score <= 10, "
                f"got {self.wrong_score} / {self.correct_score}"
            )
        pd = options.get("prompts_dir")
        self.prompts_dir = Path(pd) if pd else None
        names = ("teacher_system", "teacher", "referee", *GENERATOR_KINDS)
        self.templates: dict[str, Template] = {n: load_template(n, self.prompts_dir) for n in names}
        self._verdict = _verdict_writer(self.templates["referee"])
        jp = options.get("judge_prompts") or []
        self.judge_prompts = [p for f in ([jp] if isinstance(jp, str) else jp) for p in load_judge_prompts(f).prompts]
        self._task_marker = {k: reply_marker(self.templates[k]) for k in GENERATOR_KINDS}
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()  # requests served per kind

    # ----------------------------------------------------------------------------------------- dispatch

    def classify(self, body: dict[str, Any]) -> tuple[str, dict[str, str]]:
        """(kind, fields) of a chat request: kind in teacher / referee / generate_hard / generate_easy."""
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise PromptMismatch("oracle: the request has no messages")
        system = next((_text(m) for m in messages if m.get("role") == "system"), None)
        user = next((_text(m) for m in reversed(messages) if m.get("role") == "user"), None)
        if user is None:
            raise PromptMismatch("oracle: the request has no user message")
        for kind in ("referee", *GENERATOR_KINDS):
            fields = self.templates[kind].extract(user)
            if fields is not None:
                return kind, fields
        for jp in self.judge_prompts:  # a FastChat-style judge prompt (eval.judge_prompts / referee_prompts)
            fields = jp.template.extract(user) if (system or "") == jp.system else None
            if fields is not None and all(fields.get(k) == v for k, v in jp.defaults.items()):
                return "referee", {"instruction": fields["question"], "answer_a": fields["answer_1"],
                                   "answer_b": fields["answer_2"], "verdict_format": jp.verdict_format}
        if system is not None:
            if self.templates["teacher_system"].extract(system) is None:
                raise PromptMismatch(self._explain(system + "\n" + user, "the system message is not the teacher_system template"))
            fields = self.templates["teacher"].extract(user)
            if fields is None:
                raise PromptMismatch(self._explain(user, "the user message does not match the teacher template"))
            instruction, inp = _split_request(fields["request"])
            return "teacher", {"instruction": instruction, "input": inp}
        if world.parse_task(user) is not None:  # a bare question from the task world (e.g. an evaluation)
            return "teacher", {"instruction": user, "input": ""}
        raise PromptMismatch(self._explain(user, "no template matches the request"))

    def respond(self, body: dict[str, Any]) -> str:
        kind, fields = self.classify(body)
        rng = random.Random(self._digest(body))
        with self._lock:
            self.counts[kind] += 1
        if kind == "teacher":
            return self._teacher(fields["instruction"], rng)
        if kind == "referee":
            return self._referee(fields["instruction"], fields["answer_a"], fields["answer_b"], rng,
                                 fields.get("verdict_format"))
        return self._generate(kind, fields["instruction"], rng)

    def _digest(self, body: dict[str, Any]) -> str:
        canon = json.dumps(body, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(f"{self.seed}\x1f{canon}".encode()).hexdigest()

    def _explain(self, text: str, why: str) -> str:
        """A loud error naming the template the request most resembles."""
        where = self.prompts_dir or "the packaged prompts/"
        best, shared = None, ""
        for name, tpl in self.templates.items():
            for line in _literal_lines(tpl):
                if line in text and len(line) > len(shared):
                    best, shared = name, line
        if best is not None:
            return (
                f"oracle: {why}; the request looks like the {best!r} prompt (it contains {shared[:60]!r}) but does "
                f"not match {best}.txt in {where}: was it rendered from an edited template? Point "
                f"sim.options.prompts_dir at the same templates as the run."
            )
        return (
            f"oracle: {why} and it resembles none of the templates {', '.join(sorted(self.templates))} in {where}; "
            f"refusing to guess"
        )

    # ----------------------------------------------------------------------------------------- roles

    def _teacher(self, instruction: str, rng: random.Random) -> str:
        task = world.parse_task(instruction)
        if task is not None:
            return task.answer
        openers = ("Here is a short answer.", "Sure.", "Good question.", "Happy to help.")
        bodies = (
            "The request is outside what I can check exactly, so here is my best general guidance: "
            "break the problem into small steps and verify each one.",
            "I would start from the key facts, state the assumptions, and then give a brief conclusion.",
            "In short: it depends on the details, but the most common approach is the simplest one that works.",
        )
        return f"{rng.choice(openers)} {rng.choice(bodies)}"

    def score(self, instruction: str, answer: str) -> tuple[float, str]:
        """Noise-free score of one answer (1..10) and a short reason."""
        task = world.parse_task(instruction)
        if task is None:  # not ours: a plausibility heuristic, enough to keep a real-data run going
            words = len(answer.split())
            if words == 0:
                return 1.0, "is empty"
            return min(8.0, 4.0 + words / 20), "addresses the request in general terms"
        if world.grade(instruction, answer):
            return float(self.correct_score), "gives exactly the requested output"
        s = float(self.wrong_score)
        if self.partial_credit:
            cs = world.CATALOGUE[task.family].case_sensitive
            sim = difflib.SequenceMatcher(
                None, world.normalise_answer(answer, cs), world.normalise_answer(task.answer, cs)
            ).ratio()
            room = max(0, self.correct_score - self.wrong_score - 3)  # a wrong answer stays >= 3 points below
            s += room * sim
            if sim >= 0.5:
                return s, "is close to the requested output but not correct"
        return s, "does not give the requested output"

    def _referee(
        self, instruction: str, answer_a: str, answer_b: str, rng: random.Random, verdict_format: str | None = None
    ) -> str:
        """Scores by correctness; the reply in the referee template's verdict format, or in `verdict_format`
        (a FastChat-style judge prompt's)."""
        sa, why_a = self.score(instruction, answer_a)
        sb, why_b = self.score(instruction, answer_b)
        noise_a, noise_b = (rng.gauss(0.0, self.referee_noise), rng.gauss(0.0, self.referee_noise))
        sa += self.position_bias + noise_a
        sb += noise_b
        a, b = (max(1, min(10, round(x))) for x in (sa, sb))
        write = self._verdict if verdict_format is None else _verdict_writer(None, verdict_format)
        return write(a, b, why_a, why_b)

    def _generate(self, kind: str, seed_instruction: str, rng: random.Random) -> str:
        w, gen = self.world, self.world.generator
        seed = world.parse_task(seed_instruction)
        if seed is None or seed.family not in w.by_name:  # a seed from outside the world: a fresh task of ours
            new = w.sample_task(rng)
        elif gen.fidelity < 1.0 and rng.random() >= gen.fidelity:  # the generator strays from its prompt
            new = w.sample_task(rng)
        elif kind == "generate_hard":
            new = _fresh(w, rng, seed, seed.family, gen.difficulty_jitter)
        else:
            fams = w.domains[seed.domain]
            rarity = w.by_name[seed.family].rarity
            rarer = [f for f in fams if w.by_name[f].rarity < rarity]
            if not rarer:  # already the rarest of its domain: any other family of the domain, rarest first
                rarer = [f for f in fams if f != seed.family] or [seed.family]
            weights = [1.0 / w.by_name[f].rarity for f in rarer]
            new = _fresh(w, rng, seed, rng.choices(rarer, weights=weights)[0], gen.difficulty_jitter)
        return f"{self._task_marker[kind]} {new.instruction}"


# --------------------------------------------------------------------------------------------- template reading


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _split_request(request: str) -> tuple[str, str]:
    """(instruction, input) of a teacher request, inverting lion.prompts.teacher_request."""
    head, sep, _ = teacher_request("\x00", "\x01").partition("\x01")
    marker = head.split("\x00", 1)[1]  # what teacher_request puts between the instruction and the input
    if marker and marker in request:
        instruction, _, inp = request.partition(marker)
        if teacher_request(instruction, inp) == request:
            return instruction, inp
    return request, ""


_SCORE_SLOT = re.compile(r"<[^<>\n]*>")


def _reasons(a: int, b: int, why_a: str, why_b: str, first: str, second: str) -> str:
    if a > b:
        summary = f"{first} is the better of the two."
    elif b > a:
        summary = f"{second} is the better of the two."
    else:
        summary = "The two responses are about equally good."
    return f"{first} {why_a}. {second} {why_b}. {summary}"


def _verdict_writer(tpl: Template | None, verdict_format: str | None = None) -> Callable[[int, int, str, str], str]:
    """(a, b, why_a, why_b) -> the reply, in the verdict format the referee template declares (or
    `verdict_format`): `fastchat`, the two scores alone on the first line and the explanation below; `lion` (or
    none declared), the explanation and then the template's own verdict line filled in (no template: the
    standard `SCORES: A=<a>, B=<b>`)."""
    fmt = verdict_format or (tpl.verdict_format if tpl is not None else None)
    if fmt == "fastchat":
        return lambda a, b, wa, wb: f"{a} {b}\n{_reasons(a, b, wa, wb, 'Assistant 1', 'Assistant 2')}"
    line = _verdict_line(tpl) if tpl is not None else (lambda a, b: f"SCORES: A={a}, B={b}")
    return lambda a, b, wa, wb: f"{_reasons(a, b, wa, wb, 'Response A', 'Response B')}\n\n{line(a, b)}"


def _verdict_line(tpl: Template) -> Callable[[int, int], str]:
    """The line of the referee template that shows the verdict format, with its two score slots."""
    for line in reversed(tpl.text.splitlines()):
        slots = list(_SCORE_SLOT.finditer(line))
        if len(slots) == 2 and "A" in line[: slots[0].start()] and "B" in line[slots[0].end() : slots[1].start()]:
            s = line.strip()
            first, second = (m.group(0) for m in slots)

            def fmt(a: int, b: int, s: str = s, first: str = first, second: str = second) -> str:
                head, _, tail = s.partition(first)
                mid, _, end = tail.partition(second)
                return f"{head}{a}{mid}{b}{end}"

            return fmt
    raise ConfigError(
        f"prompts: template {tpl.name!r} shows no verdict line with two score slots (like 'SCORES: A=<score>, "
        f"B=<score>'); the oracle cannot tell which format the referee must answer in"
    )


def _literal_lines(tpl: Template) -> list[str]:
    """Distinctive literal lines of a template (used to name the template a mismatched request resembles)."""
    out = []
    for chunk in PLACEHOLDER.split(tpl.text)[::2]:
        out += [ln.strip() for ln in chunk.splitlines() if len(ln.strip()) >= 16]
    return out


def _fresh(w: TaskWorld, rng: random.Random, seed: world.Task, family: str, jitter: int = 1) -> world.Task:
    """A new instance of `family` near the seed's difficulty (+- `jitter`), different from the seed."""
    steps = tuple(range(-jitter, jitter + 1))
    for _ in range(20):
        d = seed.difficulty + rng.choice(steps)
        t = w.sample_task(rng, family, d)
        if t.instruction != seed.instruction:
            return t
    return t


# --------------------------------------------------------------------------------------------- CLI


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lion.sim.oracle", description="Show the oracle answering each role.")
    p.add_argument("--demo", action="store_true", help="print one request and reply per role")
    p.add_argument("--prompts-dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--referee-noise", type=float, default=0.0)
    p.add_argument("--position-bias", type=float, default=0.0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    o = OracleResponder(seed=args.seed, prompts_dir=args.prompts_dir, referee_noise=args.referee_noise,
                        position_bias=args.position_bias)
    t = o.world.sample_task(random.Random(args.seed))
    T = o.templates
    bodies = {
        "teacher": [{"role": "system", "content": T["teacher_system"].render()},
                    {"role": "user", "content": T["teacher"].render(request=teacher_request(t.instruction))}],
        "referee": [{"role": "user", "content": T["referee"].render(instruction=t.instruction, answer_a=t.answer,
                                                                      answer_b=t.answer[::-1] + "x")}],
        "generate_hard": [{"role": "user", "content": T["generate_hard"].render(instruction=t.instruction)}],
        "generate_easy": [{"role": "user", "content": T["generate_easy"].render(instruction=t.instruction)}],
    }
    for kind, msgs in bodies.items():
        print(f"--- {kind}  (seed task: {t.instruction!r})")
        print(o.respond({"model": "oracle", "messages": msgs}))
    return 0


if __name__ == "__main__":
    from ..errors import cli_main

    cli_main(main, sys.argv[1:])
