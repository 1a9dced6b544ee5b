"""The student answered by an inference server through the gateway (`student.infer.backend: server`).

    student: {infer: {backend: server, server_lora: true}}       llm: {student: {base_url: http://gpu7:8000/v1}}
    student: {infer: {backend: server, server_command: "vllm serve {model} --served-model-name {name} --port {port}"}}

The requests are the student's own prompts (`lion.student.data.format_prompt`) sent to `/v1/completions`
(`llm.student.provider: openai_completions`; with `prompt_format: chat_template`, the instruction as one user
message to `/v1/chat/completions`, provider `openai`), with the sampling of `student.infer`, through the gateway:
call cache (a resumed phase asks nothing twice), rate limits and retries (`llm.student.*`), progress bar, ledger.
With `student.infer.generation_config: ignore` (the default) each request also carries vLLM's neutral values of
the settings a checkpoint's generation_config.json may set (repetition_penalty 1, top_k 0, min_p 0, no
presence/frequency penalty), which a vLLM server started with its default `--generation-config auto` would
otherwise take from the checkpoint; `inherit` sends none of them. An answer with finish_reason "length" is
recorded as cut at max_new_tokens. The server's dtype is its own (`--dtype`): start it with the dtype
`student.infer.dtype` resolves to when its answers are to be compared with a local backend's.
The model name asked for is `lion-<round>-<8 hex of the checkpoint>`, so a retrained student is never answered
from an older one's cache. Two ways to have the round's student served:

- `server_lora`: a vLLM server already runs the base model with `--enable-lora` (and
  `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`) at `llm.student.base_url`, anywhere (its own tensor / pipeline / data
  parallelism across nodes). The round's adapter (`student.lora.between_rounds: continue`, a path the server
  can read) is loaded with `POST /v1/load_lora_adapter`, asked, and unloaded with `/v1/unload_lora_adapter`.
- `server_command`: a command that serves the round's checkpoint (a merged or full model: `{model}`; an
  adapter: `{base}` + `{adapter}`) under `{name}` on `{port}`, started per use and stopped afterwards; lion waits
  until `/v1/models` lists `{name}` (`server_startup_s`). The URL is `llm.student.base_url` with `{port}` filled
  in, or `http://127.0.0.1:{port}/v1`. Its output goes to RUN/student_server.log.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, LionError
from ..teachers.base import ChatRequest, redact
from .checkpoint import META, checkpoint_info
from .completion import Completion
from .infer import inference_settings
from .vllm_backend import NEUTRAL_SAMPLING

if TYPE_CHECKING:
    from ..phasectx import PhaseContext as RunContext
    from ..records import Prompted

ROLE = "student"


def served_name(model: str | Path) -> str:
    """`lion-<round dir>-<8 hex>`: the checkpoint's identity (its lion_student.json, else its config files)."""
    p = Path(model).resolve()
    h = hashlib.sha256(str(p).encode("utf-8"))
    for name in (META, "adapter_config.json", "config.json"):
        if (p / name).is_file():
            h.update((p / name).read_bytes())
            break
    parent = p.parent.name if p.name == "student" else p.name
    return f"lion-{parent}-{h.hexdigest()[:8]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fill(template: str, **values: str) -> str:
    for k, v in values.items():
        template = template.replace("{" + k + "}", v)
    return template


class ServedStudent:
    """One round's student behind an OpenAI-compatible server: open (load the adapter or start the server),
    `generate` any number of chunks through the gateway, `close` (unload / stop, restore `llm.student`)."""

    def __init__(self, ctx: RunContext, model: str | Path, phase: str) -> None:
        self.ctx, self.phase = ctx, phase
        self.model = Path(model).resolve()
        self.infer = ctx.cfg.student.infer
        self.fmt = ctx.cfg.student.prompt_format
        rc = ctx.cfg.llm.student
        want = "openai" if self.fmt == "chat_template" else "openai_completions"
        if rc.provider in ("openai", "openai_completions") and rc.provider != want:
            raise ConfigError(f"llm.student.provider: student.prompt_format {self.fmt!r} needs {want!r} "
                              f"({'/v1/chat/completions' if want == 'openai' else '/v1/completions, the prompt as the student was trained on it'}), got {rc.provider!r}")
        self.name = served_name(self.model)
        self.info = checkpoint_info(self.model)
        self._proc: subprocess.Popen[bytes] | None = None
        self._saved: Any = None
        self._loaded = False
        self._key = os.environ.get(rc.api_key_env, "") if rc.api_key_env else ""
        if self.infer.server_command:
            url = self._start_server(rc.base_url)
        else:
            if not rc.base_url:
                raise ConfigError("llm.student.base_url: must name the running server (e.g. http://gpu7:8000/v1) "
                                  "with student.infer.server_lora")
            url = self.url = rc.base_url.rstrip("/")
            self._load_adapter(url)
        self.url = url
        extra = dict(rc.extra_body)
        if self.infer.generation_config == "ignore":  # the server's defaults (a checkpoint's repetition_penalty...)
            extra = {**NEUTRAL_SAMPLING, **extra}  # give way to what student.infer states: vLLM's neutral values
        self.settings = inference_settings(self.infer, "server")
        self._saved = ctx.gateway.use_role(ROLE, dataclasses.replace(rc, base_url=url, model=self.name,
                                                                     extra_body=extra))

    # ------------------------------------------------------------------ HTTP helpers
    def _http(self, method: str, url: str, body: dict[str, Any] | None = None,
              timeout: float = 60.0) -> tuple[int, str]:
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        if self._key:
            req.add_header("Authorization", f"Bearer {self._key}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace")

    def _clean(self, text: str) -> str:
        return redact(text, [self._key])[:500]

    def _load_adapter(self, url: str) -> None:
        if self.info.adapter is None:
            raise ConfigError(f"student.infer.server_lora: the student at {self.model} is a full model, not a LoRA "
                              "adapter (student.lora.between_rounds: merge, or mode full); train adapters with "
                              "student.lora.between_rounds: continue, or serve full models with "
                              "student.infer.server_command")
        try:
            status, text = self._http("POST", f"{url}/load_lora_adapter",
                                      {"lora_name": self.name, "lora_path": str(Path(self.info.adapter).resolve())})
        except OSError as e:
            raise LionError(f"llm.student.base_url: cannot reach {url} to load the student's adapter ({e})") from None
        if status == 400 and "already" in text.lower():  # still loaded from an interrupted run
            status = 200
        if status != 200:
            raise LionError(f"llm.student.base_url: {url}/load_lora_adapter answered {status}: {self._clean(text)} "
                            "(a vLLM server started with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, "
                            "serving the adapter's base model, reading the run directory?)")
        self._loaded = True

    def _start_server(self, base_url: str | None) -> str:
        port = _free_port()
        adapter = str(Path(self.info.adapter).resolve()) if self.info.adapter is not None else ""
        line = _fill(self.infer.server_command, model=shlex.quote(str(self.model)), name=self.name,
                     port=str(port), base=shlex.quote(self.info.base), adapter=shlex.quote(adapter),
                     python=shlex.quote(sys.executable))
        url = (base_url or "http://127.0.0.1:{port}/v1").replace("{port}", str(port)).rstrip("/")
        log_path = self.ctx.run.student_server_log
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        log.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} serving {self.model} as {self.name}: {line}\n".encode())
        log.flush()
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._log = log
        self._proc = subprocess.Popen(line, shell=True, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        deadline = time.monotonic() + self.infer.server_startup_s
        while True:
            if self._proc.poll() is not None:
                tail = "".join(collections.deque(log_path.read_text(errors="replace").splitlines(True), maxlen=15))
                raise LionError(f"student.infer.server_command exited with status {self._proc.returncode} before "
                                f"serving {self.name}; log {log_path}:\n{tail}")
            try:
                status, text = self._http("GET", f"{url}/models", timeout=5.0)
                if status == 200 and self.name in {m.get("id") for m in json.loads(text).get("data", [])}:
                    return url
                if status == 200:
                    self.close()
                    raise ConfigError(f"student.infer.server_command: the server at {url} does not serve the model "
                                      f"name {self.name}; pass {{name}} to it (vLLM: --served-model-name {{name}})")
            except (OSError, ValueError):
                pass  # not listening yet
            if time.monotonic() > deadline:
                self.close()
                raise LionError(f"student.infer.server_command: {url} did not serve {self.name} within "
                                f"{self.infer.server_startup_s:g} s (student.infer.server_startup_s); log {log_path}")
            time.sleep(0.5)

    # ------------------------------------------------------------------ answering
    def _request(self, it: Prompted) -> ChatRequest:
        ic = self.infer
        if self.fmt == "chat_template":
            content = it.instruction if not it.input.strip() else f"{it.instruction}\n\n{it.input}"
        else:
            from .data import format_prompt

            content = format_prompt(it.instruction, it.input, fmt=self.fmt)
        greedy = ic.temperature == 0.0
        return ChatRequest(messages=[{"role": "user", "content": content}], temperature=ic.temperature,
                           top_p=1.0 if greedy else ic.top_p, max_tokens=ic.max_new_tokens,
                           sample=0 if greedy else ic.seed)

    def generate(self, items: Sequence[Prompted], on_answer: Callable[[int, Completion], None],
                 on_skip: Callable[[int, str], None]) -> None:
        failed: list[str] = []
        for i, res in self.ctx.gateway.chat_iter(ROLE, self.phase, (self._request(it) for it in items),
                                                 desc=f"student answers ({self.name})", total=len(items)):
            if res.ok and res.text is not None:
                on_answer(i, Completion(res.text, truncated=res.finish_reason == "length"))
            elif res.reason == "http_400" and "context length" in (res.error or "").lower():
                on_skip(i, "too_long (the server refused the prompt: longer than its context)")
            else:
                failed.append(res.error or "no answer")
        if failed:
            raise LionError(f"{len(failed)} of {len(items)} student answers failed at {self.url} (first: "
                            f"{failed[0]}); the others are saved and the calls cached: re-run to retry the rest")

    def close(self) -> None:
        if self._saved is not None:
            self.ctx.gateway.use_role(ROLE, self._saved)
            self._saved = None
        if self._loaded:
            self._loaded = False
            try:
                self._http("POST", f"{self.url}/unload_lora_adapter", {"lora_name": self.name}, timeout=30.0)
            except OSError:
                pass  # best effort: the server may be gone; a later load under the same name is accepted
        if self._proc is not None:
            proc, self._proc = self._proc, None
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=30)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    proc.wait()
            self._log.close()
