"""Prompt templates: load from `prompts/`, render with strict placeholders, and read them back.

    python -m lion.prompts [--dir prompts]      # list templates and their placeholders

A template is a plain text file with `{name}` placeholders (lower-case letters, digits, underscore).
Rendering fails on a missing or unexpected value. Only the template text is scanned for placeholders, so
values may contain braces freely.

`Template.extract(text)` inverts `render`: it turns the template into a regular expression whose
placeholders are capture groups and returns the values. The offline oracle uses it to read our own
prompts the way a model would; if someone edits a template, the oracle follows automatically, and a
render/extract round-trip test catches templates that can no longer be read back unambiguously.
The parsers for what models write in reply live next to the code that renders each template
(referee verdicts in `lion.verdicts`, new tasks in `lion.generation`).

Declarations: a template file may begin with lines `{# key: value #}`; they are not part of the text that is
sent. The one key is `verdict_format` (a judge template's reply format, a name in `lion.verdicts.FORMATS`:
`lion` or `fastchat`; a judge template that declares none speaks `lion`).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .errors import ConfigError

PLACEHOLDER = re.compile(r"\{([a-z][a-z0-9_]*)\}")
DECLARATION = re.compile(r"^\{#\s*([A-Za-z_][\w-]*)\s*:\s*(.*?)\s*#\}[ \t]*(?:\r?\n|$)")

# template name -> the placeholders it must use (documented in prompts/README.md)
TEMPLATES: dict[str, tuple[str, ...]] = {
    "teacher_system": (),
    "teacher": ("request",),  # the instruction, plus its input block when it has one (see `teacher_request`)
    "referee": ("instruction", "answer_a", "answer_b"),
    "generate_hard": ("instruction",),
    "generate_easy": ("instruction",),
}


def default_prompts_dir() -> Path:
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "prompts", here / "_prompts"):
        if (cand / "referee.txt").is_file():
            return cand
    raise ConfigError("prompts: cannot find the prompts/ directory next to the lion package; set prompts_dir")


@dataclass(frozen=True)
class Template:
    name: str
    text: str
    verdict_format: str | None = None  # declared by the file (`{# verdict_format: NAME #}`); None: not declared

    @cached_property
    def placeholders(self) -> tuple[str, ...]:
        seen: list[str] = []
        for m in PLACEHOLDER.finditer(self.text):
            if m.group(1) not in seen:
                seen.append(m.group(1))
        return tuple(seen)

    def render(self, **values: str) -> str:
        missing = [p for p in self.placeholders if p not in values]
        extra = [k for k in values if k not in self.placeholders]
        if missing or extra:
            raise ValueError(
                f"template {self.name!r}: missing values {missing} / unexpected values {extra} "
                f"(placeholders: {list(self.placeholders)})"
            )
        return PLACEHOLDER.sub(lambda m: values[m.group(1)], self.text)

    @cached_property
    def _pattern(self) -> re.Pattern[str]:
        parts: list[str] = []
        pos = 0
        seen: set[str] = set()
        for m in PLACEHOLDER.finditer(self.text):
            parts.append(re.escape(self.text[pos : m.start()]))
            name = m.group(1)
            parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>.*?)")
            seen.add(name)
            pos = m.end()
        parts.append(re.escape(self.text[pos:]))
        return re.compile("".join(parts) + r"\Z", re.DOTALL)

    def extract(self, rendered: str) -> dict[str, str] | None:
        """Values of the placeholders in a text rendered from this template, or None if it does not match."""
        m = self._pattern.match(rendered)
        return m.groupdict() if m else None


def load_template(name: str, prompts_dir: str | Path | None = None) -> Template:
    d = Path(prompts_dir) if prompts_dir else default_prompts_dir()
    path = d / f"{name}.txt"
    if not path.is_file():
        raise ConfigError(f"prompts_dir: template {name!r} not found at {path}")
    text, declared = _declarations(path.read_text(encoding="utf-8"), path)
    tpl = Template(name, text, **declared)
    want = TEMPLATES.get(name)
    if want is not None and set(tpl.placeholders) != set(want):
        raise ConfigError(
            f"prompts_dir: template {path} must use exactly the placeholders {sorted(want)}, "
            f"found {sorted(tpl.placeholders)}"
        )
    return tpl


def _declarations(text: str, path: Path) -> tuple[str, dict[str, str]]:
    """Split the leading `{# key: value #}` lines off a template file; check the keys and values."""
    from .verdicts import FORMATS

    declared: dict[str, str] = {}
    lineno = 0
    while m := DECLARATION.match(text):
        lineno += 1
        key, value = m.group(1), m.group(2)
        if key != "verdict_format":
            raise ConfigError(f"prompts_dir: {path}:{lineno}: unknown declaration {key!r} (known: verdict_format)")
        if value not in FORMATS:
            raise ConfigError(
                f"prompts_dir: {path}:{lineno}: unknown verdict_format {value!r} (known: {', '.join(sorted(FORMATS))})"
            )
        declared[key] = value
        text = text[m.end() :]
    return text, declared


def reply_marker(tpl: Template) -> str:
    """The marker a reply must begin with, as the template itself asks for it in quotes (e.g. "TASK:")."""
    m = re.search(r"""["'`]([A-Z][A-Z _-]*:)["'`]""", tpl.text)
    if m is None:
        raise ConfigError(
            f'prompts: template {tpl.name!r} asks for no quoted reply marker (like "TASK:"), so a reply to it '
            "cannot be parsed"
        )
    return m.group(1)


def teacher_request(instruction: str, input: str = "") -> str:
    """What the teacher is asked: the instruction, and its input (if any) in a block of its own."""
    return f"{instruction}\n\nInput:\n{input}" if input else instruction


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m lion.prompts", description="List prompt templates.")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args(argv)
    for name in TEMPLATES:
        t = load_template(name, args.dir)
        fmt = f"; verdict format {t.verdict_format}" if t.verdict_format else ""
        print(f"{name:16s} placeholders: {', '.join(t.placeholders) or '-'}{fmt}")
    return 0


if __name__ == "__main__":
    from .errors import cli_main

    cli_main(main, sys.argv[1:])
