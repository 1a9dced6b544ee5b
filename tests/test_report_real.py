"""The report of a REAL tiny run: two rounds of the loop (tests/loop_world.py's scripted world on the local
server, a tiny student), with per-round evaluation on Vicuna questions against the real gpt-3.5 answers."""

from __future__ import annotations

import base64
import io
import re
import sys
from pathlib import Path

import numpy as np
from conftest import shared_file
from PIL import Image

from lion.config import config_from_dict
from lion.records import read_jsonl
from lion.report import build_report, find_lineages, load_run
from lion.run import lion_loop
from lion.sim.server import SimServer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loop_world import LoopResponder  # noqa: E402


def test_report_of_a_real_two_round_run(tmp_path: Path, shared_data: Path) -> None:
    """A real 2-round loop (real seeds, per-round eval on Vicuna-80) yields a report with real charts and lineages."""
    seeds = shared_file(shared_data, "self_instruct/seed_tasks.jsonl")
    questions = shared_file(shared_data, "vicuna80/question.jsonl")
    references = shared_file(shared_data, "vicuna80/answer_gpt35.jsonl")
    with SimServer(LoopResponder(), latency_ms=1) as srv:
        url = srv.base_url
        cfg = config_from_dict(
            {
                "run_dir": str(tmp_path / "run"),
                "seed": 3,
                "rounds": 2,
                "final_imitation": False,
                "llm": {
                    "default": {
                        "base_url": url,
                        "model": "scripted",
                        "rpm": 60000,
                        "tpm": 1e8,
                        "max_in_flight": 8,
                        "max_attempts": 3,
                        "backoff_initial_s": 0.05,
                        "backoff_max_s": 0.2,
                        "timeout_s": 10,
                    },
                    "prices": {"scripted": {"input": 1.0, "output": 2.0}},
                },
                "student": {
                    "model": "tiny",
                    "tiny": {"vocab": "char", "hidden": 32, "layers": 1, "heads": 2},
                    "max_length": 256,
                    "max_steps": 4,
                    "per_device_batch_size": 8,
                    "grad_accum": 1,
                    "lr": 1e-3,
                    "infer": {"backend": "transformers", "max_new_tokens": 12, "batch_size": 16},
                },
                "pools": {"train_seed": str(seeds), "limit": 10},
                "generation": {"n_hard": 3, "n_easy": 3, "batch_size": 8},
                "eval": {
                    "every_round": True,
                    "questions": str(questions),
                    "reference_answers": str(references),
                    "max_questions": 6,
                },
            }
        )
        lion_loop(cfg, progress=False, echo=False)
    run = tmp_path / "run"
    for r in (1, 2):  # the per-round evaluation ran and landed in the round's metrics
        assert (run / f"round_{r:02d}" / "eval" / "summary.json").exists()
        assert len(read_jsonl(run / f"round_{r:02d}" / "eval" / "answers.jsonl")) == 6
    path, summary = build_report(run)
    text = path.read_text()
    assert re.search(r"^\s+2\s", summary, re.M) and "evaluation (round 2" in summary
    for ref in re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]+)['"]""", text):
        assert ref.startswith("data:") or (path.parent / ref).exists(), ref
    pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    assert len(pngs) >= 9  # discrimination x3, health, generation x2, tokens, spend, eval trend (+ per category)
    for p in pngs:
        arr = np.asarray(Image.open(io.BytesIO(base64.b64decode(p))).convert("RGB"), dtype=np.float32)
        assert arr.shape[0] >= 100 and arr.std() > 5
    # the loop's lineage is visible: a hard seed of round 1, its children judged in round 2
    lins = find_lineages(load_run(run))
    assert lins and lins[0].round == 1 and any(c["next"] is not None for c in lins[0].children)
