"""FastChat-style judge prompts in the offline world: `eval.judge_prompts` in lion.evaluate and
`discrimination.referee_prompts` in the discrimination phase, with the oracle as teacher and judge behind the
local OpenAI-compatible server, the real gateway and openai client, and a tiny local student.

    python -m pytest -q tests/test_judge_prompts_world.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lion.config import config_from_dict
from lion.context import RunContext
from lion.discrimination import discrimination
from lion.evaluate import evaluate
from lion.imitation import imitation
from lion.layout import EvalPaths
from lion.records import read_jsonl
from lion.sim import tasks as W

OWN = Path(__file__).resolve().parent / "data" / "judge_prompts.jsonl"  # our own wording (general, math)


def _prompts(tmp_path: Path, math_category: str) -> Path:
    """The test prompt file with its math prompt routed to `math_category`."""
    rows = [json.loads(line) for line in OWN.read_text().splitlines() if line.strip()]
    rows[1]["category"] = math_category
    f = tmp_path / "judge_prompts.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def _cfg(tmp_path: Path, **sections: Any) -> Any:
    data: dict[str, Any] = {
        "run_dir": str(tmp_path / "run"),
        "llm": {"default": {"model": "oracle", "max_tokens": 64, "backoff_initial_s": 0.01}},
        "student": {"model": "tiny", "tiny": {"hidden": 32, "layers": 1, "heads": 2}, "max_steps": 2,
                    "per_device_batch_size": 8, "prompt_format": "plain", "infer": {"max_new_tokens": 12}},
        "pools": {"train_seed": "unused.jsonl"},
        "sim": {"enabled": True, "responder": "oracle"},
    }
    for k, v in sections.items():
        data[k] = {**data.get(k, {}), **v}
    return config_from_dict(data)


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lion.student.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny") / "student", vocab="char", hidden=32, layers=1, heads=2)


def test_evaluation_routes_questions_to_the_prompt_of_their_category(tmp_path: Path, tiny_student: Path) -> None:
    prompts = _prompts(tmp_path, "add")
    cfg = _cfg(tmp_path, eval={"oracle_per_family": 1, "judge_prompts": str(prompts)})
    out = tmp_path / "run" / "eval" / "tiny"
    with RunContext(cfg, progress=False) as ctx:
        s = evaluate(ctx, tiny_student, EvalPaths(out), name="tiny")
    assert s["judge_prompt"] == str(prompts) and s["n_questions"] == len(W.BY_NAME)
    js = read_jsonl(out / "judgements.jsonl")
    assert len(js) == 2 * len(W.BY_NAME) and all(j["ok"] for j in js)  # the oracle answered in fastchat format
    cats = {q["id"]: q["category"] for q in read_jsonl(out / "questions.jsonl")}
    for j in js:
        assert j["prompt"] == f"judge_prompts:{'add' if cats[j['id']] == 'add' else 'general'}"
        assert j["raw"].splitlines()[0].replace(" ", "").isdigit()  # the two scores alone on the first line
    # the untrained student is wrong and the oracle judge sees it
    assert s["overall"]["relative"]["mean"] < 60 and s["judge"]["parse_failures"] == 0

    # the same evaluation with the template judge is another evaluation: not taken for finished
    cfg2 = _cfg(tmp_path, eval={"oracle_per_family": 1})
    with RunContext(cfg2, progress=False) as ctx:
        s2 = evaluate(ctx, tiny_student, EvalPaths(out), name="tiny")
    assert s2["fingerprint"] != s["fingerprint"] and s2["judge_prompt"] == "referee"
    assert all(j["prompt"] == "referee" and "SCORES: A=" in j["raw"] for j in read_jsonl(out / "judgements.jsonl"))


def test_a_missing_judge_prompt_file_is_a_config_error_before_anything_is_spent(tmp_path: Path,
                                                                               tiny_student: Path) -> None:
    from lion.errors import ConfigError

    cfg = _cfg(tmp_path, eval={"oracle_per_family": 1, "judge_prompts": str(tmp_path / "nope.jsonl")})
    with RunContext(cfg, progress=False) as ctx, pytest.raises(ConfigError, match=r"eval\.judge_prompts: .*nope"):
        evaluate(ctx, tiny_student, EvalPaths(tmp_path / "out"), name="x")
    assert not (tmp_path / "out" / "candidate_answers.jsonl").exists()


def test_discrimination_with_a_fastchat_referee_prompt_file(tmp_path: Path) -> None:
    """Seeds that carry a category (numbers tasks: "math") get the math prompt, the rest the general one; every
    verdict is read in the fastchat format and the split is made from it."""
    seeds = W.seed_pool(24, 3)
    for row in seeds:
        if row["meta"]["domain"] == "numbers":
            row["meta"]["category"] = "math"
    seed_file = tmp_path / "seeds.jsonl"
    seed_file.write_text("".join(json.dumps(r) + "\n" for r in seeds))
    cfg = _cfg(tmp_path, pools={"train_seed": str(seed_file)},
               discrimination={"referee_prompts": str(_prompts(tmp_path, "math"))})
    with RunContext(cfg, progress=False) as ctx:
        imitation(ctx, 1)
        m = discrimination(ctx, 1)
    rd = tmp_path / "run" / "round_01"
    js = read_jsonl(rd / "judgements.jsonl")
    pool = {r["id"]: r for r in read_jsonl(rd / "cache_pool.jsonl")}
    assert js and m["parse_failures"] == 0 and m["excluded"] == 0 and m["hard"] + m["easy"] == m["n"] == len(pool)
    routed = {j["prompt"] for j in js}
    assert routed == {"judge_prompts:math", "judge_prompts:general"}
    for j in js:
        is_math = pool[j["id"]]["meta"].get("category") == "math"
        assert j["prompt"] == ("judge_prompts:math" if is_math else "judge_prompts:general")
        assert j["ok"] and j["teacher_score"] is not None


def test_a_missing_referee_prompt_file_fails_before_any_teacher_call(tmp_path: Path) -> None:
    from lion.errors import ConfigError

    seed_file = tmp_path / "seeds.jsonl"
    seed_file.write_text("".join(json.dumps(r) + "\n" for r in W.seed_pool(6, 1)))
    cfg = _cfg(tmp_path, pools={"train_seed": str(seed_file)},
               discrimination={"referee_prompts": str(tmp_path / "nope.jsonl")})
    with RunContext(cfg, progress=False) as ctx:
        with pytest.raises(ConfigError, match=r"discrimination\.referee_prompts: .*nope\.jsonl: no such file"):
            discrimination(ctx, 1)
        assert ctx.gateway.usage_summary()["total"]["calls"] == 0  # nothing was asked of (or paid to) the teacher
