"""Typed run configuration: YAML file + command-line overrides, validated on load.

    python -m lion.config --config configs/smoke.yaml [--set student.lr=1e-4 ...]   # print resolved config

Every section is a dataclass. `load_config` builds them from YAML with strict checking: an unknown key,
a wrong type or an impossible value raises `ConfigError` naming the dotted key
(`llm.teacher.rpm: must be > 0, got -5`). The three LLM roles (teacher, referee, generator; plus the
evaluation judge) each start from `llm.default` and override only what they set.
The resolved config is saved into the run directory by `save_resolved`; it never holds a secret, only the
*name* of the environment variable that holds the API key.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from .errors import ConfigError

# --------------------------------------------------------------------------------------------- sections


@dataclass
class Price:
    """USD per million tokens."""

    input: float = 0.0
    output: float = 0.0

    def check(self, key: str) -> None:
        _nonneg(key + ".input", self.input)
        _nonneg(key + ".output", self.output)


@dataclass
class RoleConfig:
    """How one role (teacher, referee, generator, judge) reaches its LLM."""

    provider: str = "openai"  # "openai" (any OpenAI-compatible server), "module:Class", or an entry-point name
    base_url: str | None = None  # e.g. https://api.openai.com/v1, http://127.0.0.1:8000/v1
    api_key_env: str = "OPENAI_API_KEY"  # name of the environment variable holding the key (never the key)
    model: str = "gpt-3.5-turbo"
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 1024  # completion tokens per call
    timeout_s: float = 120.0  # per HTTP request
    rpm: float = 500.0  # requests per minute (client-side token bucket)
    tpm: float = 200_000.0  # tokens per minute (prompt estimate + max_tokens)
    max_in_flight: int = 64
    max_attempts: int = 8  # tenacity attempts per call, transient errors only
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    options: dict[str, Any] = field(default_factory=dict)  # extra kwargs passed to a plugin provider
    # replaces base_url in the call-cache key when set (e.g. "sim" for a local server on a random port, or to
    # keep a cache valid after moving to another endpoint that serves the same model)
    cache_namespace: str | None = None

    def check(self, key: str) -> None:
        if not self.provider:
            raise ConfigError(f"{key}.provider: must not be empty")
        if not self.model:
            raise ConfigError(f"{key}.model: must not be empty")
        _range(key + ".temperature", self.temperature, 0.0, 2.0)
        _range(key + ".top_p", self.top_p, 0.0, 1.0)
        for name in ("max_tokens", "max_in_flight", "max_attempts"):
            _positive(f"{key}.{name}", getattr(self, name))
        for name in ("timeout_s", "rpm", "tpm", "backoff_initial_s", "backoff_max_s"):
            _positive(f"{key}.{name}", getattr(self, name))


ROLES = ("teacher", "referee", "generator", "judge")


@dataclass
class LLMConfig:
    """The LLM roles, the price table and the budget cap. Each role = `default` + its own overrides."""

    default: RoleConfig = field(default_factory=RoleConfig)
    teacher: RoleConfig = field(default_factory=RoleConfig)
    referee: RoleConfig = field(default_factory=lambda: RoleConfig(temperature=0.0, max_tokens=512))
    generator: RoleConfig = field(default_factory=lambda: RoleConfig(temperature=1.0, max_tokens=256))
    judge: RoleConfig = field(default_factory=lambda: RoleConfig(temperature=0.0, max_tokens=512))
    prices: dict[str, Price] = field(default_factory=dict)  # model name -> USD per 1M tokens
    budget_usd: float | None = None  # stop cleanly before spending more than this (whole run)
    budget_tokens: int | None = None  # stop cleanly before using more tokens than this (in + out)
    chars_per_token: float = 4.0  # offline token estimate for rate limiting / budget pre-checks
    tokenizer: str | None = None  # optional local HF tokenizer dir for exact-ish token estimates
    cache: bool = True  # SQLite call cache in the run dir (turning it off means paying again on resume)

    def check(self, key: str) -> None:
        for role in ("default", *ROLES):
            getattr(self, role).check(f"{key}.{role}")
        for model, price in self.prices.items():
            price.check(f"{key}.prices.{model}")
        if self.budget_usd is not None:
            _nonneg(key + ".budget_usd", self.budget_usd)
        if self.budget_tokens is not None:
            _nonneg(key + ".budget_tokens", self.budget_tokens)
        _positive(key + ".chars_per_token", self.chars_per_token)

    def role(self, name: str) -> RoleConfig:
        if name not in ROLES:
            raise ConfigError(f"llm: unknown role {name!r} (roles: {', '.join(ROLES)})")
        return getattr(self, name)


@dataclass
class LoraConfig:
    r: int = 16  # LoRA rank
    alpha: int = 32  # LoRA scaling numerator (scale = alpha / r)
    dropout: float = 0.05  # dropout on the adapter input
    target_modules: list[str] | str = "all-linear"  # module names to adapt, or "all-linear" (every linear layer but the LM head)
    # between rounds: "merge" = fold the adapter into the weights and start a fresh one (default);
    # "continue" = keep training the same adapter on the same base
    between_rounds: Literal["merge", "continue"] = "merge"

    def check(self, key: str) -> None:
        _positive(key + ".r", self.r)
        _positive(key + ".alpha", self.alpha)
        _range(key + ".dropout", self.dropout, 0.0, 1.0)


@dataclass
class InferConfig:
    backend: Literal["auto", "transformers", "vllm"] = "auto"  # auto = vllm when it imports and CUDA is present
    batch_size: int = 32  # transformers backend: prompts per generate() call
    max_new_tokens: int = 512  # answer length cap (generation also stops at EOS)
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0  # nucleus sampling (temperature > 0 only)
    tensor_parallel: int = 1  # vLLM
    data_parallel: int = 1  # vLLM: engines, one per GPU group
    gpu_memory_utilization: float = 0.9  # vLLM
    dtype: str = "auto"  # "auto" = bfloat16 on CUDA, float32 on CPU; or float16 / bfloat16 / float32
    seed: int = 0  # sampling seed (temperature > 0)
    cpu_threads: int = 0  # transformers backend on CPU: torch threads; 0 = auto (1 for models under 20M parameters)
    max_model_len: int = 0  # vLLM: context length of the engine; 0 = the model's own

    def check(self, key: str) -> None:
        _positive(key + ".batch_size", self.batch_size)
        if self.dtype not in ("auto", "float16", "bfloat16", "float32"):
            raise ConfigError(f"{key}.dtype: must be auto, float16, bfloat16 or float32, got {self.dtype!r}")
        _nonneg(key + ".max_model_len", self.max_model_len)
        _nonneg(key + ".cpu_threads", self.cpu_threads)
        _positive(key + ".max_new_tokens", self.max_new_tokens)
        _range(key + ".temperature", self.temperature, 0.0, 2.0)
        _range(key + ".top_p", self.top_p, 0.0, 1.0)
        _positive(key + ".tensor_parallel", self.tensor_parallel)
        _positive(key + ".data_parallel", self.data_parallel)
        _range(key + ".gpu_memory_utilization", self.gpu_memory_utilization, 0.05, 1.0)


@dataclass
class StudentConfig:
    """The student model, how it is trained each round, and how it answers."""

    model: str = ""  # local dir or hub id of the base model; "tiny" builds the tiny offline model
    tiny: dict[str, Any] = field(default_factory=dict)  # options for lion.student.tiny when model == "tiny"
    mode: Literal["full", "lora", "qlora"] = "full"  # full fine-tuning, LoRA adapter, or LoRA on a 4-bit base (CUDA + bitsandbytes)
    lora: LoraConfig = field(default_factory=LoraConfig)
    # alpaca (the paper's), chat_template (the tokenizer's), or plain ("Q: {instruction}\nA: ", short: tiny CPU students)
    prompt_format: Literal["alpaca", "chat_template", "plain"] = "alpaca"
    max_length: int = 1024  # tokens per example (prompt + answer); a prompt this long drops the example
    packing: bool = False  # bin-pack examples into rows (no cross-example attention); batch = packed rows
    pack_length: int = 0  # tokens per packed row; 0 = max_length
    epochs: float = 3.0  # passes over the Train Pool per round
    max_steps: int = -1  # > 0 overrides epochs
    lr: float = 2e-5  # peak learning rate (AdamW)
    lr_scheduler: str = "cosine"  # transformers scheduler name: cosine, linear, constant, ...
    warmup_ratio: float = 0.03  # fraction of the steps spent warming up
    weight_decay: float = 0.0  # AdamW weight decay
    per_device_batch_size: int = 4  # examples (packed rows with packing) per process per micro-step
    grad_accum: int = 32  # effective batch = per_device_batch_size * grad_accum * world size
    bf16: bool = False  # bf16 autocast (full FT keeps fp32 weights; LoRA loads the frozen base in bf16)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more compute
    cpu_threads: int = 0  # CPU only: torch threads while training; 0 = auto (1 for models under 20M parameters)
    torch_compile: bool = False  # compile the model (TrainingArguments.torch_compile): faster steps on GPUs after a one-off compile
    fsdp: str = ""  # passed to TrainingArguments.fsdp, e.g. "full_shard auto_wrap"
    fsdp_config: dict[str, Any] = field(default_factory=dict)  # TrainingArguments.fsdp_config, e.g. transformer_layer_cls_to_wrap: [LlamaDecoderLayer]
    deepspeed: str | None = None  # path to a DeepSpeed JSON config
    num_gpus: int = 0  # > 1: training runs under torchrun with this many processes per node
    nnodes: int = 1  # > 1: multi-node torchrun; MASTER_ADDR / MASTER_PORT / NODE_RANK come from the environment
    launcher: Literal["torchrun", "accelerate"] = "torchrun"  # how a multi-process training is started
    report_to: Literal["none", "tensorboard", "wandb"] = "none"  # training logs destination (Trainer report_to)
    logging_steps: int = 10  # record the training loss every N optimizer steps
    seed: int = 42  # training seed; round r trains with seed + run seed + r
    continue_from_previous: bool = True  # round r>1 starts from round r-1's student
    infer: InferConfig = field(default_factory=InferConfig)

    def check(self, key: str) -> None:
        if not self.model:
            raise ConfigError(f"{key}.model: must be set (a local model dir, a hub id, or 'tiny')")
        self.lora.check(key + ".lora")
        self.infer.check(key + ".infer")
        _positive(key + ".max_length", self.max_length)
        _nonneg(key + ".pack_length", self.pack_length)
        _nonneg(key + ".cpu_threads", self.cpu_threads)
        if self.pack_length and self.pack_length < self.max_length:
            raise ConfigError(f"{key}.pack_length: must be 0 or >= {key}.max_length ({self.max_length}), got {self.pack_length}")
        _positive(key + ".epochs", self.epochs)
        _positive(key + ".lr", self.lr)
        _range(key + ".warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        _nonneg(key + ".weight_decay", self.weight_decay)
        _positive(key + ".per_device_batch_size", self.per_device_batch_size)
        _positive(key + ".grad_accum", self.grad_accum)
        _nonneg(key + ".num_gpus", self.num_gpus)
        _positive(key + ".nnodes", self.nnodes)
        _positive(key + ".logging_steps", self.logging_steps)
        if self.fsdp and self.deepspeed:
            raise ConfigError(f"{key}.deepspeed: cannot be combined with {key}.fsdp; choose one")
        if self.mode == "qlora" and self.fsdp:
            raise ConfigError(f"{key}.mode: qlora is not supported together with {key}.fsdp")


@dataclass
class PoolsConfig:
    train_seed: str = ""  # file (or datasets id) of the initial Train Pool
    cache_seed: str | None = None  # initial Cache Pool; default: same as train_seed
    limit: int | None = None  # use only the first N seed instructions (quick trials)
    train_pool: Literal["replace", "accumulate"] = "replace"  # next Train Pool = new, or old ∪ new

    def check(self, key: str) -> None:
        if not self.train_seed:
            raise ConfigError(f"{key}.train_seed: must name a seed file (JSONL, JSON, CSV/Parquet, or a datasets id)")
        if self.limit is not None:
            _positive(key + ".limit", self.limit)


@dataclass
class DiscriminationConfig:
    tau: float = 1.0  # hard if mean(teacher score) - mean(student score) >= tau
    referee_attempts: int = 3  # tries per order when the verdict cannot be parsed
    # temperature of those retries (None: the referee's own); a temperature-0 referee may repeat itself
    referee_retry_temperature: float | None = None
    both_orders: bool = True  # judge (teacher, student) and (student, teacher); off only for experiments

    def check(self, key: str) -> None:
        _positive(key + ".referee_attempts", self.referee_attempts)


@dataclass
class GenerationConfig:
    n_hard: int = 3000  # new instructions per round from hard seeds
    n_easy: int = 3000  # new instructions per round from easy seeds
    max_attempts_factor: float = 3.0  # stop after this many requests per wanted instruction
    batch_size: int = 256  # requests sent per wave
    min_words: int = 3
    max_words: int = 150
    rouge_threshold: float = 0.7  # reject when ROUGE-L F > this against the Cache Pool or accepted ones
    # a candidate containing one of these (word-bounded, plural allowed) talks about prompts, not a task
    meta_words: list[str] = field(
        default_factory=lambda: ["instruction", "#new prompt#", "given prompt", "rewritten prompt", "new prompt"]
    )
    decontaminate: list[str] = field(default_factory=list)  # eval question files or folders (FastChat or JSONL)
    decontam_ngram: int = 8  # reject when a word n-gram of this length occurs in an eval question
    seed: int = 0

    def check(self, key: str) -> None:
        _nonneg(key + ".n_hard", self.n_hard)
        _nonneg(key + ".n_easy", self.n_easy)
        _positive(key + ".max_attempts_factor", self.max_attempts_factor)
        _positive(key + ".batch_size", self.batch_size)
        _positive(key + ".min_words", self.min_words)
        if self.max_words < self.min_words:
            raise ConfigError(f"{key}.max_words: must be >= {key}.min_words ({self.min_words}), got {self.max_words}")
        _range(key + ".rouge_threshold", self.rouge_threshold, 0.0, 1.0)
        _positive(key + ".decontam_ngram", self.decontam_ngram)


@dataclass
class EvalConfig:
    every_round: bool = False  # evaluate each round's student after imitation (python -m lion.evaluate)
    # FastChat question.jsonl (first turn) or our JSONL; "oracle" = the offline world's held-out synthetic
    # questions (default when sim.enabled and this is unset)
    questions: str | None = None
    # answers file (FastChat answer rows {"question_id","text"} or {"id","answer"}); default: the teacher answers
    # through the gateway (role llm.teacher, phase "eval")
    reference_answers: str | None = None
    max_questions: int | None = None  # evaluate only the first N questions
    judge_template: str = "referee"  # template in prompts_dir for the judge (placeholders instruction, answer_a, answer_b)
    judge_attempts: int = 3  # tries per order when the judge's verdict cannot be parsed (then excluded, never scored)
    oracle_per_family: int = 8  # questions="oracle": held-out questions per task family
    oracle_seed: int = 1234  # questions="oracle": seed of the held-out set

    def check(self, key: str) -> None:
        if self.every_round and not self.questions:
            raise ConfigError(f"{key}.questions: must be set when {key}.every_round is true "
                              "(a question file, or \"oracle\" for the offline world's held-out questions)")
        if self.max_questions is not None:
            _positive(key + ".max_questions", self.max_questions)
        _positive(key + ".judge_attempts", self.judge_attempts)
        _positive(key + ".oracle_per_family", self.oracle_per_family)


@dataclass
class SimConfig:
    """The offline world: start a local OpenAI-compatible server with a responder for the run."""

    enabled: bool = False
    responder: str = "oracle"  # "oracle", "scripted", or "module:Class"
    options: dict[str, Any] = field(default_factory=dict)  # passed to the responder
    latency_ms: float = 0.0
    port: int = 0  # 0 = any free port


@dataclass
class LionConfig:
    """A whole run. Sections below; every key has a default except `student.model` and `pools.train_seed`."""

    run_dir: str = "runs/default"  # everything the run writes (docs/run-dir.md); re-running resumes it
    seed: int = 0  # seeds sampling of generation seeds and student training (round r trains with seed + r)
    prompts_dir: str | None = None  # templates; default: the prompts/ shipped with lion
    rounds: int = 3  # adversarial rounds (the paper: 3); raise it later to continue a finished run
    final_imitation: bool = True  # after the last round, train once more on the last Train Pool
    llm: LLMConfig = field(default_factory=LLMConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    pools: PoolsConfig = field(default_factory=PoolsConfig)
    discrimination: DiscriminationConfig = field(default_factory=DiscriminationConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sim: SimConfig = field(default_factory=SimConfig)

    def check(self) -> None:
        _nonneg("rounds", self.rounds)
        self.llm.check("llm")
        self.student.check("student")
        self.pools.check("pools")
        self.discrimination.check("discrimination")
        self.generation.check("generation")
        self.eval.check("eval")

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir)


# --------------------------------------------------------------------------------------------- checks


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key}: must be > 0, got {value!r}")


def _nonneg(key: str, value: float) -> None:
    if not value >= 0:
        raise ConfigError(f"{key}: must be >= 0, got {value!r}")


def _range(key: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ConfigError(f"{key}: must be between {lo} and {hi}, got {value!r}")


# --------------------------------------------------------------------------------------------- building


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(key: str, tp: Any, value: Any) -> Any:
    """Check `value` against type `tp` and build dataclasses; raise ConfigError naming `key`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _convert(key, opt, value)
            except ConfigError as e:
                errors.append(e)
        names = " or ".join(_type_name(o) for o in options if o is not type(None))
        raise ConfigError(f"{key}: expected {names}, got {type(value).__name__} {value!r}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return _build(tp, value, key)
    if origin is list:
        (item_tp,) = get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [_convert(f"{key}[{i}]", item_tp, v) for i, v in enumerate(value)]
    if origin is dict:
        _, val_tp = get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return {str(k): _convert(f"{key}.{k}", val_tp, v) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `2e-5` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} at {key}")  # a bug in this module, not user input


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{key}: unknown key (known keys here: {known})")
        kwargs[name] = _convert(key, hints[name], value)
    return cls(**kwargs)


def _merge_roles(data: dict[str, Any]) -> dict[str, Any]:
    """Each role = llm.default overlaid with the role's own keys (role-specific defaults kept if unset)."""
    llm = data.get("llm")
    if llm is None:
        return data
    if not isinstance(llm, dict):
        raise ConfigError(f"llm: expected a mapping, got {type(llm).__name__}")
    default = llm.get("default") or {}
    if not isinstance(default, dict):
        raise ConfigError("llm.default: expected a mapping")
    role_defaults = {f.name: f.default_factory() for f in dataclasses.fields(LLMConfig) if f.name in ROLES}  # type: ignore[misc]
    base_defaults = dataclasses.asdict(RoleConfig())
    for role in ROLES:
        own = llm.get(role) or {}
        if not isinstance(own, dict):
            raise ConfigError(f"llm.{role}: expected a mapping")
        # role-specific built-in defaults (e.g. referee temperature 0) apply unless default or role sets them
        specific = {k: v for k, v in dataclasses.asdict(role_defaults[role]).items() if v != base_defaults[k]}
        llm[role] = {**specific, **default, **own}
    return data


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"{dotted}: cannot set a key inside {p!r}, which is not a mapping")
        node = nxt
    node[parts[-1]] = value


def parse_overrides(items: list[str] | None) -> list[tuple[str, Any]]:
    """`key.sub=value` strings (value parsed as YAML) -> pairs."""
    out = []
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. student.lr=1e-4")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out.append((key.strip(), value))
    return out


def config_from_dict(data: dict[str, Any], overrides: list[tuple[str, Any]] | None = None) -> LionConfig:
    data = json.loads(json.dumps(data))  # deep copy, plain types
    for key, value in overrides or []:
        _set_dotted(data, key, value)
    data = _merge_roles(data)
    cfg = _build(LionConfig, data, "")
    cfg.check()
    return cfg


def load_config(path: str | os.PathLike[str] | None, overrides: list[str] | None = None) -> LionConfig:
    """Load YAML `path` (or defaults when None), apply `--set` overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{p}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of keys")
    try:
        return config_from_dict(data, parse_overrides(overrides))
    except ConfigError as e:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{e}") from None


def to_dict(cfg: LionConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_resolved(cfg: LionConfig, path: str | os.PathLike[str]) -> None:
    """Write the resolved config as YAML (atomic). Holds env-var *names* only, never key values."""
    from .records import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """The `--config` / `--set` arguments every entry point shares."""
    parser.add_argument("--config", "-c", required=True, help="YAML config file")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set student.lr=1e-4 (repeatable; value parsed as YAML)",
    )


_FIELD_LINE = re.compile(r"^    (\w+): ([^=]+?)(?: = (.*?))?(?:\s+#\s*(.*))?$")


def config_reference() -> str:
    """A Markdown reference of every config key, built from the dataclasses and their field comments."""
    out = ["# Config reference", "",
           "Generated by `python -m lion.config --reference` from `lion/config.py`; every key, its type, "
           "default and meaning. Roles `llm.teacher`, `llm.referee`, `llm.generator` and `llm.judge` take the "
           "keys of `llm.default`, and inherit every key they do not set from it.", ""]

    def section(cls: type, prefix: str) -> None:
        rows = []
        nested = []
        comment_above: list[str] = []
        for line in inspect.getsource(cls).splitlines():
            stripped = line.strip()
            if stripped.startswith("#") and line.startswith("    #"):
                comment_above.append(stripped.lstrip("# "))
                continue
            m = _FIELD_LINE.match(line)
            if not m or m.group(1) in ("def", "class") or "(" in m.group(1):
                comment_above = []
                continue
            name, tp, default, comment = m.groups()
            hint = typing.get_type_hints(cls).get(name)
            if hint is not None and dataclasses.is_dataclass(hint):
                nested.append((hint, f"{prefix}{name}."))
                comment_above = []
                continue
            if default and "default_factory" in default:
                default = repr(getattr(cls(), name)) if name not in ROLES else ""
            doc = " ".join([*comment_above, comment or ""]).strip()
            rows.append(f"| `{prefix}{name}` | `{tp.strip()}` | `{default or ''}` | {doc} |")
            comment_above = []
        title = prefix.rstrip(".") or "top level"
        out.extend([f"## {title}", "", (cls.__doc__ or "").strip(), "", "| key | type | default | meaning |",
                    "|---|---|---|---|", *rows, ""])
        for hint, p in nested:
            if hint is RoleConfig and p != "llm.default.":
                continue
            section(hint, p)

    section(LionConfig, "")
    return "\n".join(out)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lion.config", description="Validate a config and print it resolved.")
    p.add_argument("--config", "-c", help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--reference", action="store_true", help="print the Markdown reference of every key")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.reference:
        print(config_reference())
        return 0
    if not args.config:
        raise ConfigError("--config: required (or --reference)")
    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    from .errors import cli_main

    cli_main(main)
