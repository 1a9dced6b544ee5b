"""Simple responders for the sim server: scripted rules (tests) and echo.

    python -m lion.sim.server --responder echo
    ScriptedResponder([(r"^Rate", "8"), (lambda text: "bye" in text, "Goodbye!")], default="ANSWER: {user}")

A responder turns the parsed /v1/chat/completions body into the assistant's text. `ScriptedResponder`
tries its rules in order on the last user message; a rule is (regex string | compiled pattern |
predicate, reply) where the reply is a string (`{user}` is replaced by the last user message, `{model}` by
the requested model) or a callable taking the whole body. The default applies when no rule matches.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

Matcher = str | re.Pattern[str] | Callable[[str], bool]
Reply = str | Callable[[dict[str, Any]], str]


def last_user_message(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages") or []):
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):  # content parts
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return content if isinstance(content, str) else ""
    return ""


def _fill(reply: Reply, body: dict[str, Any], user: str) -> str:
    if callable(reply):
        return str(reply(body))
    return reply.replace("{user}", user).replace("{model}", str(body.get("model", "")))


class ScriptedResponder:
    def __init__(self, rules: Sequence[tuple[Matcher, Reply]] = (), default: Reply = "OK: {user}") -> None:
        self.rules: list[tuple[Callable[[str], bool], Reply]] = []
        for matcher, reply in rules:
            if isinstance(matcher, str):
                pattern = re.compile(matcher)
                self.rules.append((lambda text, p=pattern: p.search(text) is not None, reply))
            elif isinstance(matcher, re.Pattern):
                self.rules.append((lambda text, p=matcher: p.search(text) is not None, reply))
            elif callable(matcher):
                self.rules.append((matcher, reply))
            else:
                raise TypeError(f"rule matcher must be a regex or a predicate, got {matcher!r}")
        self.default = default

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> ScriptedResponder:
        """From config: {"rules": [{"match": REGEX, "reply": TEXT}, ...], "default": TEXT}."""
        rules = []
        for i, r in enumerate(options.get("rules", [])):
            if not isinstance(r, dict) or "match" not in r or "reply" not in r:
                raise ValueError(f"scripted responder rules[{i}]: expected {{match: REGEX, reply: TEXT}}, got {r!r}")
            rules.append((str(r["match"]), str(r["reply"])))
        return cls(rules, default=str(options.get("default", "OK: {user}")))

    def respond(self, body: dict[str, Any]) -> str:
        user = last_user_message(body)
        for pred, reply in self.rules:
            if pred(user):
                return _fill(reply, body, user)
        return _fill(self.default, body, user)


class EchoResponder:
    """Replies with the last user message (prefix configurable)."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def respond(self, body: dict[str, Any]) -> str:
        return self.prefix + last_user_message(body)
