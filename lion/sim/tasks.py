"""The synthetic task world behind the offline oracle: task families, phrasings and exact ground truth.

    python -m lion.sim.tasks --families                 # list families, domains, rarity, difficulty range
    python -m lion.sim.tasks --sample 12 --seed 0       # print sampled instances with their answers
    python -m lion.sim.tasks --seed-pool 400 --out seed.jsonl   # write a seed pool (rows: instruction + meta)

Every instance belongs to a *family* (reverse a word, add two numbers, ...) inside a *domain*
(letters, numbers, words) and has a *difficulty* from 1 (easy) to 5 (hard) that sets word length, digit
count or list length. Each family has several phrasings; `parse_task` recognises any phrasing this module
produces and recomputes the truth from the text alone, so an instruction written by the oracle's generator
in one process can be graded by the oracle's referee in another. Answers are short exact strings, sized for
a tiny character-level student: copy-like families (uppercase, reverse of short words) are learnable in a
minute of CPU training, arithmetic with carries is not.

A family's `rarity` weight sets how often it appears in the seed pool: common families dominate, rare ones
are what the generator's "easy" branch (same domain, rarer topic) reaches for.

A *world* is a choice of families with their rarity and difficulty range, the oracle referee's noise and bias,
and the generator's fidelity (`TaskWorld`). The built-in one (`DEFAULT`, what the module-level functions use)
is the world every earlier figure was measured in; others are read from YAML files (`load_world`, config key
`sim.world`; configs/worlds/ holds the shipped ones, docs/efficacy.md says how each was chosen):

    python -m lion.sim.tasks --world configs/worlds/rare_learnable.yaml --families
    python -m lion.sim.tasks --world configs/worlds/rare_learnable.yaml --seed-pool 1000 --out seed.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

from ..world import HeldOutQuestion

MIN_DIFFICULTY = 1
MAX_DIFFICULTY = 5

LETTERS = "abcdefghijklmnopqrstuvwxyz"

# everyday words for the "words" domain (short, lower case, distinct)
LEXICON: tuple[str, ...] = tuple(
    """
    apple river stone cloud green house table chair light bread water smile dream plant tiger horse
    mouse paper music night ocean queen robot sheep train wheel zebra beach candy dance eagle field
    grape heart juice knife lemon mango nurse onion piano quilt radio snake tower uncle voice whale
    yacht arrow brick crown daisy ember flute ghost honey igloo jelly koala llama maple north olive
    pearl quiet rainy salad tulip umber vivid wagon xenon yield zesty amber bison cedar delta frost
    glove hazel ivory joker kayak lunar medal noble orbit pilot raven solar thorn ultra vapor witty
    ant bee cat dog elk fox gnu hen owl pig rat yak bus car cup fan hat jam key map net pen
    sun box egg ink jar kit lid mug nut oak pot rug toy van web
    """.split()
)


@dataclass(frozen=True)
class Task:
    family: str
    domain: str
    difficulty: int
    instruction: str
    answer: str

    @property
    def meta(self) -> dict[str, object]:
        return {"family": self.family, "domain": self.domain, "difficulty": self.difficulty}


# slot name -> regular expression for its value inside an instruction
SLOT_PATTERNS: dict[str, str] = {
    "w": r"[a-z]+",  # a letter string
    "c": r"[a-z]",  # one letter
    "a": r"\d+",
    "b": r"\d+",
    "nums": r"\d+(?:, \d+)+",  # "12, 7, 85"
    "phrase": r"[a-z]+(?: [a-z]+)+",  # "red apple tree"
    "wordlist": r"[a-z]+(?:, [a-z]+)+",  # "pear, bird, lamp"
}
_SLOT = re.compile(r"\{([a-z]+)\}")


@dataclass(frozen=True)
class Family:
    name: str
    domain: str
    rarity: float  # relative frequency in the seed pool (higher = more common)
    phrasings: tuple[str, ...]
    make: Callable[[random.Random, int], dict[str, str]]  # difficulty -> slot values
    solve: Callable[[dict[str, str]], str]
    difficulty_of: Callable[[dict[str, str]], int]
    case_sensitive: bool = False  # grading: does letter case matter in the answer?
    difficulty: tuple[int, int] = (MIN_DIFFICULTY, MAX_DIFFICULTY)  # the range a world samples (and clips) from

    def clip(self, d: int) -> int:
        """A difficulty inside this family's range."""
        lo, hi = self.difficulty
        return max(lo, min(hi, d))

    def render(self, rng: random.Random, difficulty: int, phrasing: int | None = None) -> Task:
        slots = self.make(rng, difficulty)
        tpl = self.phrasings[rng.randrange(len(self.phrasings)) if phrasing is None else phrasing]
        text = _SLOT.sub(lambda m: slots[m.group(1)], tpl)
        return Task(self.name, self.domain, difficulty, text, self.solve(slots))

    def patterns(self) -> list[re.Pattern[str]]:
        out = []
        for tpl in self.phrasings:
            parts, pos = [], 0
            for m in _SLOT.finditer(tpl):
                parts.append(re.escape(tpl[pos : m.start()]))
                parts.append(f"(?P<{m.group(1)}>{SLOT_PATTERNS[m.group(1)]})")
                pos = m.end()
            parts.append(re.escape(tpl[pos:]))
            out.append(re.compile("".join(parts)))
        return out


# --------------------------------------------------------------------------------------------- helpers


def _word(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(n))


def _number(rng: random.Random, digits: int) -> int:
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def _clip(d: int) -> int:
    return max(MIN_DIFFICULTY, min(MAX_DIFFICULTY, d))


# difficulty -> digits of the two operands of add / subtract
_OPERAND_DIGITS = {1: (1, 1), 2: (2, 1), 3: (2, 2), 4: (3, 2), 5: (3, 3)}


def _operands(rng: random.Random, d: int, ordered: bool) -> dict[str, str]:
    da, db = _OPERAND_DIGITS[d]
    a, b = _number(rng, da), _number(rng, db)
    if ordered and a < b:
        a, b = b, a
    return {"a": str(a), "b": str(b)}


def _operand_difficulty(s: dict[str, str]) -> int:
    da, db = sorted((len(s["a"]), len(s["b"])), reverse=True)
    for d, digits in _OPERAND_DIGITS.items():
        if (da, db) == digits:
            return d
    return _clip(da + db - 1)


def _count_letter(rng: random.Random, d: int) -> dict[str, str]:
    n = d + 3
    c = rng.choice(LETTERS)
    k = rng.randint(0, min(3, n))
    others = [x for x in LETTERS if x != c]
    chars = [c] * k + [rng.choice(others) for _ in range(n - k)]
    rng.shuffle(chars)
    return {"c": c, "w": "".join(chars)}


def _distinct_words(rng: random.Random, n: int) -> list[str]:
    return rng.sample(LEXICON, n)


# --------------------------------------------------------------------------------------------- families

FAMILIES: tuple[Family, ...] = (
    # ---- letters
    Family(
        "uppercase", "letters", 5.0,
        (
            "Write in capital letters: {w}",
            "Convert to uppercase: {w}",
            "Please uppercase this word: {w}",
            "All caps, please: {w}",
        ),
        lambda rng, d: {"w": _word(rng, d + 2)},
        lambda s: s["w"].upper(),
        lambda s: _clip(len(s["w"]) - 2),
        case_sensitive=True,
    ),
    Family(
        "reverse", "letters", 5.0,
        (
            "Reverse the letters: {w}",
            "Write this word backwards: {w}",
            "Spell in reverse order: {w}",
            "Reverse this word: {w}",
        ),
        lambda rng, d: {"w": _word(rng, d + 2)},
        lambda s: s["w"][::-1],
        lambda s: _clip(len(s["w"]) - 2),
    ),
    Family(
        "sort_letters", "letters", 2.0,
        (
            "Sort the letters alphabetically: {w}",
            "Put these letters in a to z order: {w}",
            "Arrange in alphabetical order: {w}",
            "Sort these letters: {w}",
        ),
        lambda rng, d: {"w": _word(rng, d + 2)},
        lambda s: "".join(sorted(s["w"])),
        lambda s: _clip(len(s["w"]) - 2),
    ),
    Family(
        "count_letter", "letters", 1.0,
        (
            "How many {c}'s are in: {w}",
            "Count the letter {c} in: {w}",
            "Number of {c} letters in: {w}",
            "How often does {c} occur in: {w}",
        ),
        _count_letter,
        lambda s: str(s["w"].count(s["c"])),
        lambda s: _clip(len(s["w"]) - 3),
    ),
    Family(
        "last_letter", "letters", 3.0,
        (
            "Last letter of: {w}",
            "What letter does this word end with: {w}",
            "Give the final letter: {w}",
            "Which letter comes last in: {w}",
        ),
        lambda rng, d: {"w": _word(rng, d + 2)},
        lambda s: s["w"][-1],
        lambda s: _clip(len(s["w"]) - 2),
    ),
    # ---- numbers
    Family(
        "add", "numbers", 4.0,
        (
            "What is {a} plus {b}?",
            "Add {a} and {b}.",
            "Compute the sum of {a} and {b}.",
            "Calculate {a} + {b}.",
        ),
        lambda rng, d: _operands(rng, d, ordered=False),
        lambda s: str(int(s["a"]) + int(s["b"])),
        _operand_difficulty,
    ),
    Family(
        "subtract", "numbers", 2.0,
        (
            "What is {a} minus {b}?",
            "Subtract {b} from {a}.",
            "Compute the difference {a} - {b}.",
            "Take {b} away from {a}. What is left?",
        ),
        lambda rng, d: _operands(rng, d, ordered=True),
        lambda s: str(int(s["a"]) - int(s["b"])),
        _operand_difficulty,
    ),
    Family(
        "largest", "numbers", 2.0,
        (
            "Largest of these numbers: {nums}",
            "Find the biggest number: {nums}",
            "Give the maximum of: {nums}",
            "Pick the largest value: {nums}",
        ),
        lambda rng, d: {"nums": ", ".join(str(rng.randint(1, 99)) for _ in range(d + 1))},
        lambda s: str(max(int(x) for x in s["nums"].split(", "))),
        lambda s: _clip(len(s["nums"].split(", ")) - 1),
    ),
    Family(
        "parity", "numbers", 1.0,
        (
            "Even or odd: {a}",
            "Is this number odd or even: {a}",
            "Tell me if it is even or odd: {a}",
            "Parity of the number: {a}",
        ),
        lambda rng, d: {"a": str(_number(rng, d))},
        lambda s: "even" if int(s["a"]) % 2 == 0 else "odd",
        lambda s: _clip(len(s["a"])),
    ),
    # ---- words
    Family(
        "acronym", "words", 3.0,
        (
            "Initials in capitals: {phrase}",
            "Make an acronym from: {phrase}",
            "Acronym of these words: {phrase}",
            "Give the uppercase initials of: {phrase}",
        ),
        lambda rng, d: {"phrase": " ".join(_distinct_words(rng, d + 1))},
        lambda s: "".join(w[0] for w in s["phrase"].split()).upper(),
        lambda s: _clip(len(s["phrase"].split()) - 1),
        case_sensitive=True,
    ),
    Family(
        "last_word", "words", 1.5,
        (
            "Last word of: {phrase}",
            "What is the final word in: {phrase}",
            "Give the last word: {phrase}",
            "Which word is last in: {phrase}",
        ),
        lambda rng, d: {"phrase": " ".join(_distinct_words(rng, d + 1))},
        lambda s: s["phrase"].split()[-1],
        lambda s: _clip(len(s["phrase"].split()) - 1),
    ),
    Family(
        "alpha_first", "words", 1.0,
        (
            "First word alphabetically: {wordlist}",
            "Which comes first in a dictionary: {wordlist}",
            "Alphabetically earliest word: {wordlist}",
            "Pick the word that sorts first: {wordlist}",
        ),
        lambda rng, d: {"wordlist": ", ".join(_distinct_words(rng, d + 1))},
        lambda s: min(s["wordlist"].split(", ")),
        lambda s: _clip(len(s["wordlist"].split(", ")) - 1),
    ),
)

CATALOGUE: dict[str, Family] = {f.name: f for f in FAMILIES}  # every family this module knows, default settings
_PATTERNS: list[tuple[Family, re.Pattern[str]]] = [(f, p) for f in FAMILIES for p in f.patterns()]


# --------------------------------------------------------------------------------------------- truth (any world)


def _normalise_instruction(text: str) -> str:
    return " ".join(text.split())


def parse_task(instruction: str) -> Task | None:
    """Recognise an instruction written in any of our phrasings (any family of the catalogue, whatever the world);
    None when it is not one of ours."""
    text = _normalise_instruction(instruction)
    for fam, pat in _PATTERNS:
        m = pat.fullmatch(text)
        if m:
            slots = m.groupdict()
            try:
                answer = fam.solve(slots)
            except ValueError:
                continue
            return Task(fam.name, fam.domain, fam.difficulty_of(slots), text, answer)
    return None


def normalise_answer(answer: str, case_sensitive: bool) -> str:
    """Light normalisation before exact match: whitespace, surrounding quotes, a trailing full stop."""
    a = " ".join(answer.split())
    a = a.strip().rstrip(".").strip()
    if len(a) >= 2 and a[0] == a[-1] and a[0] in "'\"`":
        a = a[1:-1].strip()
    return a if case_sensitive else a.lower()


def grade(instruction: str, answer: str) -> bool | None:
    """Exact match against the truth after light normalisation; None when the instruction is not ours."""
    task = parse_task(instruction)
    if task is None:
        return None
    cs = CATALOGUE[task.family].case_sensitive
    return normalise_answer(answer, cs) == normalise_answer(task.answer, cs)


# --------------------------------------------------------------------------------------------- worlds


@dataclass(frozen=True)
class RefereeSpec:
    """How the oracle referee scores (lion.sim.oracle): correctness, partial credit, then noise and a bias."""

    noise: float = 0.0  # std of the gaussian noise added to each score
    position_bias: float = 0.0  # points added to whichever answer is shown first
    correct_score: int = 9
    wrong_score: int = 2
    partial_credit: bool = True  # a wrong answer close to the truth scores up to 3 points below a correct one


@dataclass(frozen=True)
class GeneratorSpec:
    """How faithfully the oracle generator follows its prompt."""

    fidelity: float = 1.0  # share of replies that do what the prompt asks (hard: the seed's family; easy: a rarer
    #                        family of the seed's domain); the rest are a task of a family drawn by the world's rarity
    difficulty_jitter: int = 1  # a hard reply's difficulty is the seed's +- up to this much


class TaskWorld:
    """One world: its families (with their rarity and difficulty range), its referee and its generator. Offers the
    loop exact grading and held-out questions (lion.world.World). `referee` is None when the world leaves the
    referee to the oracle's own options (the built-in world)."""

    def __init__(self, families: Sequence[Family] = FAMILIES, *, name: str = "tasks",
                 referee: RefereeSpec | None = None, generator: GeneratorSpec = GeneratorSpec(),
                 source: str | None = None) -> None:
        if not families:
            raise ValueError("a world needs at least one family")
        self.name, self.referee, self.generator, self.source = name, referee, generator, source
        self.families: tuple[Family, ...] = tuple(families)
        self.by_name: dict[str, Family] = {f.name: f for f in self.families}
        self.domains: dict[str, list[str]] = {}
        for f in self.families:
            self.domains.setdefault(f.domain, []).append(f.name)
        self._weights = [f.rarity for f in self.families]

    # ---- the World protocol (lion.world)
    def family(self, instruction: str) -> str | None:
        task = parse_task(instruction)
        return None if task is None else task.family

    def grade(self, instruction: str, answer: str) -> bool | None:
        return grade(instruction, answer)

    def heldout(self, per_family: int, seed: int, exclude: Collection[str] = ()) -> list[HeldOutQuestion]:
        return [
            HeldOutQuestion(str(r["instruction"]), str(r["meta"]["family"]), str(r["answer"]))  # type: ignore[index]
            for r in self.heldout_set(per_family, seed, exclude)
        ]

    # ---- sampling
    def get_family(self, name: str) -> Family:
        try:
            return self.by_name[name]
        except KeyError:
            raise KeyError(f"unknown task family {name!r} in world {self.name!r} (families: "
                           f"{', '.join(self.by_name)})") from None

    def sample_task(self, rng: random.Random, family: str | None = None, difficulty: int | None = None) -> Task:
        """One instance: of `family` (default: drawn by rarity) at `difficulty` (default: uniform over the family's
        range; a given one is clipped to it)."""
        fam = rng.choices(self.families, weights=self._weights)[0] if family is None else self.get_family(family)
        d = rng.randint(*fam.difficulty) if difficulty is None else fam.clip(int(difficulty))
        return fam.render(rng, d)

    def seed_pool(self, n: int, seed: int) -> list[dict[str, object]]:
        """`n` distinct instructions drawn by rarity, difficulty uniform: rows {"instruction", "meta"}."""
        rng = random.Random(f"seed-pool:{seed}")
        seen: set[str] = set()
        out: list[Task] = []
        tries = 0
        while len(out) < n:
            tries += 1
            if tries > 100 * n + 1000:
                raise RuntimeError(f"cannot draw {n} distinct tasks")
            t = self.sample_task(rng)
            if t.instruction not in seen:
                seen.add(t.instruction)
                out.append(t)
        return [{"instruction": t.instruction, "meta": t.meta} for t in out]

    def heldout_set(self, n_per_family: int, seed: int, exclude: Collection[str] = ()) -> list[dict[str, object]]:
        """`n_per_family` distinct instances of every family, difficulties cycling over the family's range, none in
        `exclude` (compared with whitespace normalised); rows carry the answer too."""
        rng = random.Random(f"heldout:{seed}")
        skip = {_normalise_instruction(x) for x in exclude}
        rows: list[dict[str, object]] = []
        for fam in self.families:
            lo, hi = fam.difficulty
            seen: set[str] = set()
            i = 0
            while len(seen) < n_per_family:
                t = fam.render(rng, lo + i % (hi - lo + 1))
                i += 1
                if t.instruction in seen or t.instruction in skip:
                    continue
                seen.add(t.instruction)
                rows.append({"instruction": t.instruction, "answer": t.answer, "meta": t.meta})
        return rows

    def describe(self) -> list[str]:
        total = sum(self._weights)
        return [f"{f.domain:8s} {f.name:13s} share {f.rarity / total:5.1%}  difficulty {f.difficulty[0]}..{f.difficulty[1]}"
                for f in self.families]


DEFAULT = TaskWorld()  # the built-in world: the catalogue's families and rarities; the referee from sim.options

# the built-in world's pieces, as module-level names (used across lion and its tests)
BY_NAME: dict[str, Family] = DEFAULT.by_name
DOMAINS: dict[str, list[str]] = DEFAULT.domains
get_family = DEFAULT.get_family
sample_task = DEFAULT.sample_task
seed_pool = DEFAULT.seed_pool
heldout_set = DEFAULT.heldout_set


# --------------------------------------------------------------------------------------------- world files

_WORLD_KEYS = ("name", "description", "families", "referee", "generator")
_FAMILY_KEYS = ("rarity", "difficulty")


def _fail(where: str, key: str, why: str) -> NoReturn:
    from ..errors import ConfigError

    raise ConfigError(f"{where}: {key}: {why}")


def _num(value: Any, where: str, key: str, *, lo: float | None = None, hi: float | None = None,
            positive: bool = False, integer: bool = False) -> Any:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        _fail(where, key, f"expected {'an integer' if integer else 'a number'}, got {value!r}")
    if positive and not value > 0:
        _fail(where, key, f"must be > 0, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        _fail(where, key, f"must be between {lo:g} and {hi:g}, got {value!r}")
    return value


def _section(data: Mapping[str, Any], name: str, known: Sequence[str], where: str) -> dict[str, Any]:
    sec = data.get(name) or {}
    if not isinstance(sec, Mapping):
        _fail(where, name, f"expected a mapping, got {type(sec).__name__}")
    for k in sec:
        if k not in known:
            _fail(where, f"{name}.{k}", f"unknown key (known keys here: {', '.join(known)})")
    return dict(sec)


def world_from_dict(data: Any, where: str = "world", source: str | None = None) -> TaskWorld:
    """A TaskWorld from a world file's mapping; a bad value raises ConfigError naming `where` and the key."""
    if not isinstance(data, Mapping):
        _fail(where, "top level", "a world file is a mapping (keys: " + ", ".join(_WORLD_KEYS) + ")")
    for k in data:
        if k not in _WORLD_KEYS:
            _fail(where, str(k), f"unknown key (known keys here: {', '.join(_WORLD_KEYS)})")
    fams = data.get("families")
    if not isinstance(fams, Mapping) or not fams:
        _fail(where, "families", "must map at least one family name to its settings "
                                 f"(families: {', '.join(CATALOGUE)})")
    families = []
    for name, spec in fams.items():
        key = f"families.{name}"
        if name not in CATALOGUE:
            _fail(where, key, f"unknown family (families: {', '.join(CATALOGUE)})")
        spec = {} if spec is None else spec
        if not isinstance(spec, Mapping):
            _fail(where, key, f"expected a mapping with {', '.join(_FAMILY_KEYS)}, got {spec!r}")
        for k in spec:
            if k not in _FAMILY_KEYS:
                _fail(where, f"{key}.{k}", f"unknown key (known keys here: {', '.join(_FAMILY_KEYS)})")
        base = CATALOGUE[name]
        rarity = float(_num(spec.get("rarity", base.rarity), where, f"{key}.rarity", positive=True))
        rng_ = spec.get("difficulty", list(base.difficulty))
        if (not isinstance(rng_, (list, tuple)) or len(rng_) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in rng_)
                or not MIN_DIFFICULTY <= rng_[0] <= rng_[1] <= MAX_DIFFICULTY):
            _fail(where, f"{key}.difficulty", f"expected [low, high] with {MIN_DIFFICULTY} <= low <= high <= "
                                              f"{MAX_DIFFICULTY}, got {rng_!r}")
        families.append(replace(base, rarity=rarity, difficulty=(int(rng_[0]), int(rng_[1]))))
    ref = _section(data, "referee", [f.name for f in RefereeSpec.__dataclass_fields__.values()], where)
    referee = None
    if ref:
        for k in ("noise", "position_bias"):
            if k in ref:
                _num(ref[k], where, f"referee.{k}", lo=0.0 if k == "noise" else -10.0, hi=10.0)
        for k in ("correct_score", "wrong_score"):
            if k in ref:
                _num(ref[k], where, f"referee.{k}", lo=1, hi=10, integer=True)
        if "partial_credit" in ref and not isinstance(ref["partial_credit"], bool):
            _fail(where, "referee.partial_credit", f"expected true or false, got {ref['partial_credit']!r}")
        referee = RefereeSpec(**ref)
        if referee.wrong_score > referee.correct_score:
            _fail(where, "referee.wrong_score", f"must be <= referee.correct_score ({referee.correct_score}), got "
                                                f"{referee.wrong_score}")
    gen = _section(data, "generator", list(GeneratorSpec.__dataclass_fields__), where)
    if "fidelity" in gen:
        _num(gen["fidelity"], where, "generator.fidelity", lo=0.0, hi=1.0)
    if "difficulty_jitter" in gen:
        _num(gen["difficulty_jitter"], where, "generator.difficulty_jitter", lo=0, hi=4, integer=True)
    name = data.get("name", "tasks")
    if not isinstance(name, str) or not name:
        _fail(where, "name", f"expected a non-empty string, got {name!r}")
    return TaskWorld(families, name=name, referee=referee, generator=GeneratorSpec(**gen), source=source)


def load_world(path: str | Path | None) -> TaskWorld:
    """The world of a YAML file (config key `sim.world`); None: the built-in world."""
    if path is None:
        return DEFAULT
    import yaml

    from ..errors import ConfigError

    p = Path(path)
    where = f"sim.world ({p})"
    if not p.is_file():
        raise ConfigError(f"sim.world: {p} does not exist (a world file, e.g. configs/worlds/default.yaml)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        raise ConfigError(f"{p}{f':{mark.line + 1}' if mark is not None else ''}: not a valid YAML world file "
                          f"({getattr(e, 'problem', None) or e})") from None
    return world_from_dict(data, where, source=str(p))


def bench_mc(n_per_family: int, seed: int, exclude: Collection[str] = (), n_choices: int = 3) -> list[dict[str, object]]:
    """A multiple-choice benchmark of the world for lm-eval (a task over a local JSON file, lion.benchmarks): held-out
    instances (none in `exclude`), each with its answer and n_choices - 1 other answers of its family, shuffled; rows
    {"question", "choices", "answer": index of the right choice, "family"}."""
    rows = heldout_set(n_per_family, seed, exclude)
    rng = random.Random(f"bench-mc:{seed}")
    by_family: dict[str, list[str]] = {}
    for r in rows:
        by_family.setdefault(str(r["meta"]["family"]), []).append(str(r["answer"]))  # type: ignore[index]
    out: list[dict[str, object]] = []
    for r in rows:
        fam, truth = str(r["meta"]["family"]), str(r["answer"])  # type: ignore[index]
        others = sorted({a for a in by_family[fam] if a != truth})
        choices = [truth, *rng.sample(others, min(n_choices - 1, len(others)))]
        rng.shuffle(choices)
        out.append({"question": r["instruction"], "choices": choices, "answer": choices.index(truth), "family": fam})
    return out


# --------------------------------------------------------------------------------------------- CLI


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lion.sim.tasks", description="Inspect the synthetic task world.")
    p.add_argument("--families", action="store_true", help="list the task families")
    p.add_argument("--sample", type=int, default=0, help="print N sampled instances")
    p.add_argument("--seed-pool", type=int, default=0, help="write a seed pool of N instructions to --out")
    p.add_argument("--heldout", type=int, default=0, help="write N held-out instances per family to --out")
    p.add_argument("--bench-mc", type=int, default=0,
                   help="write a multiple-choice benchmark of N instances per family to --out (an lm-eval task's data)")
    p.add_argument("--exclude", type=Path, default=None, help="with --bench-mc: leave out the instructions of this file")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--world", default=None, help="a world file (configs/worlds/*.yaml); default: the built-in world")
    return p


def main(argv: list[str] | None = None) -> int:
    from ..errors import ConfigError
    from ..records import atomic_write_text

    args = make_parser().parse_args(argv)
    w = load_world(args.world)
    if args.families or not (args.sample or args.seed_pool or args.heldout or args.bench_mc):
        print(f"world {w.name}" + (f" ({w.source})" if w.source else " (built in)"))
        print("\n".join(w.describe()))
    if args.sample:
        rng = random.Random(args.seed)
        for _ in range(args.sample):
            t = w.sample_task(rng)
            print(f"[{t.family} d{t.difficulty}] {t.instruction}  ->  {t.answer}")
    if args.bench_mc:
        if args.out is None:
            raise ConfigError("--out: required with --bench-mc")
        skip = [json.loads(x)["instruction"] for x in args.exclude.read_text().splitlines() if x.strip()] \
            if args.exclude else []
        rows = bench_mc(args.bench_mc, args.seed, skip)
        atomic_write_text(args.out, "".join(json.dumps(r) + "\n" for r in rows))
        print(f"wrote {len(rows)} rows to {args.out}")
    for n, fn in ((args.seed_pool, w.seed_pool), (args.heldout, w.heldout_set)):
        if n:
            if args.out is None:
                raise ConfigError("--out: required with --seed-pool / --heldout")
            rows = fn(n, args.seed)
            atomic_write_text(args.out, "".join(json.dumps(r) + "\n" for r in rows))
            print(f"wrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    from ..errors import cli_main

    cli_main(main, sys.argv[1:])
