"""What every phase needs: the config, the run directory, the gateway, the templates, the answer store, the world.

Used as a context manager by the driver and by each phase's own entry point:

    with RunContext(cfg) as ctx:
        imitation(ctx, 1)

Entering takes the run directory's one-writer lock (lion.lock: a second process on the same directory exits
at once with status 2, naming the holder); leaving releases it.
When `sim.enabled` is set (the offline world), entering the context starts the local OpenAI-compatible
server with the configured responder and points every LLM role at it; leaving stops it. This is the one place
that knows the simulator: a responder that offers a world (lion.world.World: exact grading, held-out
questions) makes it `ctx.world`; in a real run `ctx.world` is None and no simulator code is imported.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import (
    ROLES,
    LionConfig,
    add_config_args,
    add_run_dir_arg,
    load_config,
    run_dir_override,
    save_resolved,
)
from .errors import LionError
from .lock import RunLock
from .prompts import Template, load_template
from .rundir import RunDir
from .world import HeldOutQuestion, World

if TYPE_CHECKING:
    from .answerstore import AnswerStore

log = logging.getLogger("lion.run")


class RunContext:
    def __init__(self, cfg: LionConfig, *, progress: bool = True):
        self.cfg = cfg
        self.run = RunDir(cfg.run_dir)
        self.progress = progress
        self._server: Any = None
        self._gateway: Any = None
        self._templates: dict[str, Template] = {}
        self.world: World | None = None
        self._heldout: list[HeldOutQuestion] | None = None
        self._lock = RunLock(self.run.root)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> RunContext:
        from .logs import setup_logging

        self.run.root.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()  # first: a second writer leaves before touching anything (lion.lock)
        try:
            lc = self.cfg.log
            setup_logging(lc.level, self.run.log if lc.file else None, heartbeat_s=lc.heartbeat_s,
                          progress=self.progress)
            for line in self.cfg.llm.notes():  # e.g. a built-in temperature a gpt-5 referee does not take
                log.info("%s", line)
            self.run.check_or_init_state(self.cfg)
            save_resolved(self.cfg, self.run.config)
            if self.cfg.sim.enabled:
                self._start_sim()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if "answers" in self.__dict__:  # the answer store was opened (cached_property)
            self.__dict__.pop("answers").close()
        if self._gateway is not None:
            self._gateway.close()
            self._gateway = None
        if self._server is not None:
            self._server.stop()
            self._server = None
        self._lock.release()

    def _start_sim(self) -> None:
        from .sim.server import SimServer

        sim = self.cfg.sim
        responder = sim_responder(self.cfg)
        self.world = world_of(responder)
        if sim.url:  # a server started apart (it outlives this process: benchmarks that kill runs)
            url = sim.url
        else:
            self._server = SimServer(responder, latency_ms=sim.latency_ms, port=sim.port, log_path=self.run.sim_log,
                                     strict=sim.strict, batch_delay_s=sim.batch_delay_s,
                                     batch_fail_rate=sim.batch_fail_rate, batch_expire_rate=sim.batch_expire_rate)
            url = self._server.start()
        # every role talks to the local server; the cache key uses the namespace "sim", not the port,
        # so a resumed run (new port) replays the same calls
        for role in ("default", *ROLES):
            rc = getattr(self.cfg.llm, role)
            rc.base_url = url
            rc.cache_namespace = "sim"

    # ------------------------------------------------------------------ shared pieces
    @property
    def gateway(self) -> Any:
        if self._gateway is None:
            from .teachers.gateway import Gateway

            self._gateway = Gateway(self.cfg.llm, self.run.root, progress=self.progress)
        return self._gateway

    def template(self, name: str) -> Template:
        """A prompt template, read from disk once per run (phases render thousands of prompts)."""
        if name not in self._templates:
            self._templates[name] = load_template(name, self.cfg.prompts_dir)
        return self._templates[name]

    def heldout(self) -> list[HeldOutQuestion]:
        """The offline world's held-out questions (`eval.questions: oracle`): drawn apart from the seed pool, and
        rejected by generation, so that no pool ever holds one. Empty without a world."""
        if self.world is None:
            return []
        if self._heldout is None:
            from .pools import seed_cache_pool
            from .records import iter_pool

            # drawn apart from the seed pool: round 1's Cache Pool, or the seed files before the run starts
            first = self.run.round(1).cache_pool
            if first.exists():
                seeds = [i.instruction for i in iter_pool(first)]
            elif Path(self.cfg.pools.train_seed).exists():
                seeds = [i.instruction for i in seed_cache_pool(self)]
            else:
                seeds = []
            ec = self.cfg.eval
            self._heldout = self.world.heldout(ec.oracle_per_family, ec.oracle_seed, exclude=seeds)
        return self._heldout

    @cached_property
    def answers(self) -> AnswerStore:
        """The teacher-answer store (lion.answers)."""
        from .answerstore import AnswerStore

        llm = self.cfg.llm
        return AnswerStore(self.run.teacher_answers, self.run.answer_index(llm.cache_path),
                           allow_network_fs=llm.allow_network_fs)


def sim_responder(cfg: LionConfig) -> Any:
    """The offline world's responder, as `sim.responder` / `sim.options` describe it."""
    from .sim.server import make_responder

    options = dict(cfg.sim.options)
    if cfg.prompts_dir and "prompts_dir" not in options and cfg.sim.responder == "oracle":
        options["prompts_dir"] = cfg.prompts_dir
    if cfg.sim.world and cfg.sim.responder == "oracle":
        options["world"] = cfg.sim.world
    if cfg.sim.responder == "hf" and "cache_dir" not in options and cfg.student.init.cache_dir:
        options["cache_dir"] = cfg.student.init.cache_dir  # one GGUF cache for the student and the local server
    judge_files = [  # a missing file is reported, naming its key, by the phase that uses it
        f for f in (cfg.eval.judge_prompts, cfg.discrimination.referee_prompts) if f and Path(f).is_file()
    ]
    if judge_files and "judge_prompts" not in options and cfg.sim.responder == "oracle":
        options["judge_prompts"] = judge_files  # the oracle referee also reads FastChat-style judge prompts
    return make_responder(cfg.sim.responder, options)


def world_of(responder: Any) -> World | None:
    offered = getattr(responder, "world", None)
    return offered if isinstance(offered, World) else None


def offline_world(cfg: LionConfig) -> World | None:
    """The world a run of `cfg` would offer (None unless sim.enabled), without starting any server."""
    return world_of(sim_responder(cfg)) if cfg.sim.enabled else None


def make_phase_parser(phase: str, doc: str | None) -> argparse.ArgumentParser:
    """The command line every phase shares: `python -m lion.<phase> --config C --round R [--run-dir D] [--set k=v]`."""
    p = argparse.ArgumentParser(prog=f"python -m lion.{phase}", description=(doc or "").split("\n\n")[0])
    add_config_args(p)
    p.add_argument("--round", "-r", type=int, required=True, help="round number (1-based)")
    add_run_dir_arg(p)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def run_phase(
    phase: Callable[[RunContext, int], dict[str, Any]],
    args: argparse.Namespace,
    describe: Callable[[dict[str, Any]], str],
) -> int:
    """Load the config, run one phase of one round inside a RunContext, print a one-line summary."""
    if args.round < 1:
        raise LionError(f"--round: must be >= 1, got {args.round}")
    cfg = load_config(args.config, [*args.overrides, *run_dir_override(args.run_dir)])
    with RunContext(cfg, progress=args.progress) as ctx:
        metrics = phase(ctx, args.round)
    print(f"round {args.round} {phase.__name__}: {describe(metrics)}")
    return 0
