"""A sim-server responder that answers with a real student checkpoint: a small stand-in for `vllm serve`.

    python -m lion.sim.server --responder lion.sim.model:StudentModelResponder \
        --options '{"model": "RUN/round_01/student"}' --model-name NAME --port 8000

With the sim server's vLLM-style endpoints (lion.sim.server) it serves what `student.infer.backend: server`
asks for: `/v1/completions` generates from the prompt with the checkpoint named by the request's model — an
adapter loaded through `/v1/load_lora_adapter` (attached to its base with PEFT) or the `model` option — and
chat requests apply the tokenizer's chat template to the messages. Prompts are tokenised by lion's own rule
(`lion.student.data.encode_prompt`, as both local backends do) and generation runs with the transformers backend
(`lion.student.infer.StudentSession`), so greedy answers equal `backend: transformers` answers; an answer cut at
`max_tokens` is answered with finish_reason "length" and its exact token count. One request at a
time (the server's responder thread); meant for tests and CPU demonstrations, not for throughput.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..config import InferConfig
from ..errors import LionError
from .server import Completion


class StudentModelResponder:
    def __init__(self, model: str | None = None, infer: dict[str, Any] | None = None) -> None:
        self.default = model
        self.cfg = InferConfig(**{"backend": "transformers", **(infer or {})})
        self.adapters: dict[str, str] = {}
        self._sessions: dict[str, Any] = {}
        self.generated = 0  # prompts answered (for tests)

    # the sim server's LoRA hooks
    def load_adapter(self, name: str, path: str) -> None:
        if not (Path(path) / "adapter_config.json").is_file():
            raise LionError(f"{path}: not a LoRA adapter directory (no adapter_config.json)")
        self.adapters[name] = path

    def unload_adapter(self, name: str) -> None:
        session = self._sessions.pop(self.adapters.pop(name, ""), None)
        if session is not None:
            session.close()

    def _session(self, model: str | None) -> Any:
        from ..student.infer import StudentSession

        path = self.adapters.get(model or "") or self.default
        if path is None:
            raise LionError(f"model {model!r}: no such adapter loaded, and no default model to serve")
        if path not in self._sessions:
            self._sessions[path] = StudentSession(path, self.cfg, progress=False)
        return self._sessions[path]

    def _generate(self, body: dict[str, Any], prompt_of: Any) -> Completion:
        session = self._session(body.get("model"))
        temperature = float(body.get("temperature") or 0.0)
        session.cfg = dataclasses.replace(
            self.cfg, max_new_tokens=int(body.get("max_tokens") or 16), temperature=temperature,
            top_p=float(body.get("top_p") or 1.0) if temperature else 1.0, seed=int(body.get("seed") or 0))
        self.generated += 1
        got: list[Any] = []
        session.generate([prompt_of(session)], on_answer=lambda _i, answer: got.append(answer))
        (answer,) = got
        return Completion(answer.text, finish="length" if answer.truncated else "stop",
                          completion_tokens=len(answer.tokens) if answer.tokens is not None else None)

    def complete(self, body: dict[str, Any]) -> Completion:
        """/v1/completions: the prompt as written."""
        prompt = body["messages"][-1]["content"]
        return self._generate(body, lambda _session: prompt)

    def respond(self, body: dict[str, Any]) -> Completion:
        """/v1/chat/completions: the messages under the tokenizer's chat template (+ generation prompt)."""
        messages = [{"role": m["role"], "content": m["content"]} for m in body["messages"]]

        def templated(session: Any) -> str:
            if not getattr(session.tokenizer, "chat_template", None):
                raise LionError(f"{session.model_path}: the tokenizer has no chat template; use /v1/completions")
            return session.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

        return self._generate(body, templated)
