"""A deterministic scripted world for the loop tests: recognises our prompt kinds through the templates and
answers as teacher, referee and generator by fixed rules (importable by a subprocess, so it is a module).

Rules:
- teacher: "The answer to <first three words> is <last word reversed>." (a fixed function of the request);
- referee: an answer scores 9 when it equals the teacher's answer; otherwise 9 for "easy-by-construction"
  instructions (content hash divisible by 3) and 3 for the rest, so both hard and easy instructions occur;
  for instructions whose hash is divisible by 7 the first sample of each order is garbage (no verdict line),
  which exercises the retry-as-new-sample rule;
- generator: a new instruction assembled from word lists, chosen by a hash of (seed, kind, request seed).
"""

from __future__ import annotations

import hashlib
from typing import Any

from lion.prompts import load_template

ADJ = ["quiet", "bright", "ancient", "curious", "gentle", "rapid", "hidden", "golden", "frozen", "noisy", "humble",
       "strange", "modern", "rural", "coastal", "fragile", "brave", "silver", "lonely", "vivid"]
NOUN = ["harbor", "violin", "glacier", "library", "orchard", "satellite", "market", "lighthouse", "volcano", "bridge",
        "garden", "museum", "river", "forest", "engine", "castle", "desert", "island", "factory", "theater"]
VERB = ["Describe", "Explain", "Summarize", "Compare", "Outline", "Imagine", "Evaluate", "Sketch", "Predict", "List"]
TAIL = ["in two sentences", "for a child", "using a metaphor", "as a news headline", "with three facts",
        "from a historian's view", "in under fifty words", "as a short dialogue", "with one example", "step by step"]


def h(*parts: object) -> int:
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:12], 16)


def teacher_answer(request: str) -> str:
    words = request.split()
    last = words[-1].strip(".?!") if words else "x"
    return f"The answer to {' '.join(words[:3])} is {last[::-1]}."


class LoopResponder:
    def __init__(self, prompts_dir: str | None = None) -> None:
        names = ("teacher", "referee", "generate_hard", "generate_easy")
        self.t = {n: load_template(n, prompts_dir) for n in names}

    def respond(self, body: dict[str, Any]) -> str:
        user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        seed = body.get("seed") or 0
        if (v := self.t["referee"].extract(user)) is not None:
            instr = v["instruction"]
            if h(instr) % 7 == 0 and seed == 0:
                return "Both answers have merits; I find it hard to say."
            a, b = self.score(instr, v["answer_a"]), self.score(instr, v["answer_b"])
            return f"Answer A and answer B were compared on accuracy.\n\nSCORES: A={a}, B={b}"
        for kind in ("hard", "easy"):
            if (v := self.t[f"generate_{kind}"].extract(user)) is not None:
                k = h(v["instruction"], kind, seed)
                parts = [VERB[k % 10], "the", ADJ[(k // 10) % 20], NOUN[(k // 200) % 20], "of the",
                         ADJ[(k // 4000) % 20], NOUN[(k // 80000) % 20], TAIL[(k // 1600000) % 10]]
                return "TASK: " + " ".join(parts) + "."
        if (v := self.t["teacher"].extract(user)) is not None:
            return teacher_answer(v["request"])
        return "Unrecognised request."

    @staticmethod
    def score(instruction: str, answer: str) -> int:
        if answer.strip() == teacher_answer(instruction):
            return 9
        return 9 if h(instruction) % 3 == 0 else 3
