"""Judge prompts: what the referee and the evaluation judge are sent, and the verdict format they answer in.

    python -m lion.judge_prompts FILE [--questions Q.jsonl]   # list a FastChat prompt file's prompts and, with
                                                             # a question file, which prompt each category gets

Two kinds, one Protocol (`JudgePrompt`: a name, a verdict format, `messages(instruction, answer_a, answer_b)`):

- `TemplateJudge`: one of our templates (prompts/referee.txt, or `eval.judge_template`) with the placeholders
  `instruction`, `answer_a`, `answer_b`, sent as one user message; its verdict format is the one the template
  declares (`{# verdict_format: fastchat #}` on its first line, see lion.prompts), `lion` when it declares none.
- `FastChatPrompt`: one row of a FastChat-style `prompt.jsonl` (`eval.judge_prompts`,
  `discrimination.referee_prompts`): {"prompt_id", "system_prompt", "prompt_template", "defaults", "category"}. The
  system prompt is the system message; the template's `{question}`, `{answer_1}`, `{answer_2}` take the instruction
  and the two answers, every other placeholder (FastChat's `{prompt}`) its value from "defaults". Verdict format
  `fastchat`, unless the row says otherwise under "verdict_format".

`JudgePrompts` (a loaded prompt file) routes each question by its category as FastChat does: the prompt whose
"category" equals the question's (Vicuna-80: coding, math), otherwise the "general" prompt, otherwise the first
row. lion ships no judge wording of FastChat's; point the config at the file you use.

Every answer (and the instruction) is rendered with template-delimiter look-alikes neutralised (`<<<END RESPONSE
A>>>`, `[The End of Assistant 1's Answer]`, and for a prompt file any line that repeats one of the template's own
lines), so an answer cannot close its own block and forge another one.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Protocol

from .errors import ConfigError, DataError
from .prompts import PLACEHOLDER, Template
from .verdicts import FORMATS

__all__ = [
    "FastChatPrompt", "JudgePrompt", "JudgePrompts", "TemplateJudge", "judge_router", "load_judge_prompts",
    "neutralise",
]

_DELIM_LIKE = re.compile(r"<<<([^<>\n]{0,60})>>>")
_BLOCK_LIKE = re.compile(r"\[(\s*the\s+(?:start|end)\s+of\b[^\[\]\n]{0,80})\]", re.IGNORECASE)
JUDGE_PLACEHOLDERS = ("instruction", "answer_a", "answer_b")
FASTCHAT_PLACEHOLDERS = ("question", "answer_1", "answer_2")
GENERAL = "general"


def neutralise(answer: str) -> str:
    """Defuse template-delimiter look-alikes (`<<<...>>>`, `[The End of ...]`) inside an answer; keep the rest."""
    answer = _DELIM_LIKE.sub(lambda m: f"<< {m.group(1).strip()} >>", answer)
    return _BLOCK_LIKE.sub(lambda m: f"({m.group(1).strip()})", answer)


class JudgePrompt(Protocol):
    """What judge_pairs needs of a prompt: its name (recorded with each verdict), the verdict format its replies
    come in, and the chat messages comparing answer_a (shown first) with answer_b (shown second)."""

    @property
    def name(self) -> str: ...

    @property
    def verdict_format(self) -> str: ...

    def messages(self, instruction: str, answer_a: str, answer_b: str) -> list[dict[str, str]]: ...


@dataclass(frozen=True)
class TemplateJudge:
    """One of our templates as a judge prompt (placeholders instruction, answer_a, answer_b)."""

    template: Template

    def __post_init__(self) -> None:
        if set(self.template.placeholders) != set(JUDGE_PLACEHOLDERS):
            raise ConfigError(
                f"prompts_dir: judge template {self.template.name!r} must use exactly the placeholders "
                f"{sorted(JUDGE_PLACEHOLDERS)}, found {sorted(self.template.placeholders)}"
            )

    @property
    def name(self) -> str:
        return self.template.name

    @property
    def verdict_format(self) -> str:
        return self.template.verdict_format or "lion"

    def messages(self, instruction: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
        content = self.template.render(
            instruction=neutralise(instruction), answer_a=neutralise(answer_a), answer_b=neutralise(answer_b)
        )
        return [{"role": "user", "content": content}]


@dataclass(frozen=True)
class FastChatPrompt:
    """One row of a FastChat-style prompt.jsonl (see the module doc)."""

    prompt_id: str
    category: str
    system: str
    template: Template
    defaults: dict[str, str] = field(default_factory=dict)
    verdict_format: str = "fastchat"
    description: str = ""

    @property
    def name(self) -> str:
        return f"{self.template.name}:{self.category or self.prompt_id}"

    @cached_property
    def _literal_lines(self) -> frozenset[str]:
        """The template's own lines around the placeholders (its delimiters, e.g. "[The End of ...]")."""
        chunks = PLACEHOLDER.split(self.template.text)[::2]
        return frozenset(ln.strip() for c in chunks for ln in c.splitlines() if ln.strip())

    def _defuse(self, text: str) -> str:
        """neutralise(), and a line of the text that repeats one of the template's own lines is put in brackets."""
        lines = neutralise(text).split("\n")
        return "\n".join(f"({ln.strip()})" if ln.strip() in self._literal_lines else ln for ln in lines)

    def messages(self, instruction: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
        values = {p: self.defaults[p] for p in self.template.placeholders if p not in FASTCHAT_PLACEHOLDERS}
        content = self.template.render(
            question=self._defuse(instruction), answer_1=self._defuse(answer_a), answer_2=self._defuse(answer_b),
            **values,
        )
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, {"role": "user", "content": content}]


@dataclass(frozen=True)
class JudgePrompts:
    """A loaded FastChat-style prompt file: its prompts, routed by question category."""

    path: Path
    prompts: tuple[FastChatPrompt, ...]

    def for_category(self, category: str) -> FastChatPrompt:
        """The prompt of `category`; else the "general" one; else the first (FastChat's rule)."""
        by_cat = {p.category: p for p in self.prompts}
        return by_cat.get(category) or by_cat.get(GENERAL) or self.prompts[0]


def load_judge_prompts(path: str | Path, key: str | None = None) -> JudgePrompts:
    """Read a FastChat-style prompt.jsonl; a bad row is a DataError naming the file and line, a missing file a
    ConfigError naming the config `key` that points at it (a DataError when no key is given)."""
    from .records import iter_jsonl

    path = Path(path)
    if not path.is_file():
        if key is not None:
            raise ConfigError(f"{key}: {path}: no such file (a FastChat-style judge prompt.jsonl)")
        raise DataError(f"{path}: judge prompt file not found")
    prompts: list[FastChatPrompt] = []
    seen: dict[str, int] = {}
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object")
        text = row.get("prompt_template")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: no 'prompt_template' (the judge's user message, with {{question}}, "
                            "{answer_1} and {answer_2})")
        system = row.get("system_prompt", "")
        defaults = row.get("defaults", {})
        if not isinstance(system, str):
            raise DataError(f"{where}: 'system_prompt' must be a string")
        if not isinstance(defaults, dict) or not all(isinstance(v, str) for v in defaults.values()):
            raise DataError(f"{where}: 'defaults' must be an object of strings")
        category = row.get("category", "")
        if not isinstance(category, str):
            raise DataError(f"{where}: 'category' must be a string")
        if category in seen:
            raise DataError(f"{where}: a second prompt for category {category!r} (the first is on line "
                            f"{seen[category]}); each category routes to one prompt")
        seen[category] = lineno
        fmt = row.get("verdict_format", "fastchat")
        if fmt not in FORMATS:
            raise DataError(f"{where}: unknown verdict_format {fmt!r} (known: {', '.join(sorted(FORMATS))})")
        tpl = Template(path.stem, text, verdict_format=fmt)
        missing = [p for p in FASTCHAT_PLACEHOLDERS if p not in tpl.placeholders]
        if missing:
            raise DataError(f"{where}: prompt_template lacks the placeholders {missing} (it must show the question "
                            "and both answers)")
        undefined = [p for p in tpl.placeholders if p not in FASTCHAT_PLACEHOLDERS and p not in defaults]
        if undefined:
            raise DataError(f"{where}: prompt_template uses {undefined} but 'defaults' gives no value for them")
        prompts.append(
            FastChatPrompt(
                prompt_id=str(row.get("prompt_id", lineno)),
                category=category,
                system=system,
                template=tpl,
                defaults={k: v for k, v in defaults.items() if k in tpl.placeholders},
                verdict_format=fmt,
                description=str(row.get("description", "")),
            )
        )
    if not prompts:
        raise DataError(f"{path}: no judge prompts in the file")
    return JudgePrompts(path, tuple(prompts))


def judge_router(judge: Template | JudgePrompt | JudgePrompts) -> Callable[[str], JudgePrompt]:
    """category -> the prompt that judges a question of that category."""
    if isinstance(judge, JudgePrompts):
        return judge.for_category
    prompt: JudgePrompt = TemplateJudge(judge) if isinstance(judge, Template) else judge
    if prompt.verdict_format not in FORMATS:
        raise ConfigError(f"judge prompt {prompt.name!r}: unknown verdict format {prompt.verdict_format!r}")
    return lambda _category: prompt


# ------------------------------------------------------------------------------------------------ CLI


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lion.judge_prompts", description="Show a FastChat prompt file.")
    p.add_argument("file", help="FastChat-style prompt.jsonl")
    p.add_argument("--questions", default=None, help="question file: show which prompt each category gets")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    jp = load_judge_prompts(args.file)
    for p in jp.prompts:
        extra = [x for x in p.template.placeholders if x not in FASTCHAT_PLACEHOLDERS]
        print(f"prompt {p.prompt_id}: category {p.category or '-'}, verdict format {p.verdict_format}, system "
              f"prompt {len(p.system)} chars, template {len(p.template.text)} chars"
              + (f", defaults for {', '.join(extra)}" if extra else "") + (f"  ({p.description})" if p.description else ""))
    if args.questions:
        from .records import load_instructions

        insts, _ = load_instructions(args.questions)
        counts: dict[tuple[str, str], int] = {}
        for i in insts:
            cat = str(i.meta.get("category") or "")
            key = (cat, jp.for_category(cat).name)
            counts[key] = counts.get(key, 0) + 1
        for (cat, name), n in sorted(counts.items()):
            print(f"{cat or '(no category)':16s} {n:4d} questions -> {name}")
    return 0


if __name__ == "__main__":
    from .errors import cli_main

    cli_main(main, sys.argv[1:])
