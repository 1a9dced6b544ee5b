"""A plan before spending: what a run of this config will call, cost and take, per round and phase.

    python -m lion.plan --config configs/lion-7b-fsdp.yaml [--rounds N] [--gpu-gb 80] [--json]
    python -m lion.run --config C --dry-run                       # the same, from the run command
    python -m lion.plan --config configs/smoke.yaml --compare runs/smoke   # plan vs a run's measured ledger

Per round and phase (imitation, per-round evaluation, discrimination, generation; the final imitation; the control
student's control-generation, control-imitation and control-eval, eval.control) and role:
the calls, tokens in and out, USD online and in batch mode (`llm.prices`, `batch_discount`), hours at the role's
RPM / TPM / max_in_flight and which of them binds, and how many batches go out one after another in batch mode.
It warns when the plan exceeds `llm.budget_usd` or a round would take longer than a day online, and estimates the
student's GPU memory per device (lion.memplan), saying what would fit when it does not.

How the numbers are made (printed with the plan as its assumptions):
- prompts are rendered from the real seed pool and the run's templates and counted like the gateway counts them
  (`llm.chars_per_token` or `llm.tokenizer`); later rounds' new instructions are taken to be like the seeds;
- calls follow the loop: the teacher answers each instruction once (the answer store), the referee judges every
  Cache Pool instruction in both orders each round, the generator asks in waves until `n_hard` / `n_easy` are
  accepted or `max_attempts_factor` is spent, the judge scores the evaluation questions in both orders each round;
- answer lengths: in the offline world (`sim.enabled`) the responder itself answers a sample of the real prompts
  and the generator's acceptance rate is measured through the real filters; otherwise the seeds' own outputs
  (Alpaca-style rows), else half of each role's max_tokens, and an acceptance rate of 0.8;
- prompt-cache reads are not predicted (they only lower the cost); USD follows the ledger's rule
  (lion.teachers.pricing.tokens_usd), and each priced model's cache-read rate is named (the full input price for a
  model the table does not know); TPM counts prompt + max_tokens per call, as the providers do; latency
  (`--latency-s`) bounds calls per second through max_in_flight;
- every referee / judge pair is paid in both orders: an upper bound. When a student answer is identical to the
  teacher's, both orders are the same prompt (sent once), and a student that answers an instruction as it did the
  round before makes a prompt the cache already holds; short exact answers (the offline world) do this a lot:
  `--student-match F` plans for a share F of such pairs. `--compare RUN` prints `requests` (paid + cache replays,
  what the call model predicts) apart from paid calls, and the share the cache served.
`--seed-count N` plans for a pool of N instructions like those in pools.train_seed (e.g. before downloading all).
`--calibrate RUN` scales every step by what the plan missed on a measured run, per round, role and phase (the cache
replays above, the generator's real acceptance): run a pilot (a smaller config, one or two rounds), then plan the
big run calibrated on it; or re-plan a run in progress on its own finished rounds.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import ROLES, LionConfig, RoleConfig, add_config_args, load_config
from .errors import ConfigError, DataError
from .prompts import Template, load_template, reply_marker, teacher_request
from .records import Instruction, load_instructions
from .teachers.pricing import pricing_notes, tokens_usd
from .teachers.tokens import TokenCounter

SAMPLE = 96  # prompts the offline world's responder answers to measure lengths
DAY_H = 24.0


@dataclass
class Step:
    """One role's calls in one phase of one round."""

    round: int
    phase: str
    role: str
    calls: float
    tokens_in: float
    tokens_out: float
    tpm_tokens: float  # prompt + max_tokens per call, summed (what TPM limits count)
    usd_online: float = 0.0
    usd_batch: float = 0.0
    hours: float = 0.0
    binds: str = ""
    batches: int = 1  # batches sent one after another in batch mode
    mode: str = "online"
    requests: float = 0.0  # calls the loop asks for (paid + cache replays); --calibrate scales `calls` only


@dataclass
class Plan:
    config: str
    rounds: int
    final_imitation: bool
    steps: list[Step] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    memory: dict[str, Any] | None = None
    calibrated: dict[str, Any] | None = None  # --calibrate RUN: the run and the factors applied
    control: dict[str, Any] | None = None  # eval.control: what the control student adds (calls, USD, hours)

    def total(self, steps: Sequence[Step] | None = None) -> dict[str, float]:
        steps = self.steps if steps is None else steps
        out = {k: sum(getattr(s, k) for s in steps) for k in ("calls", "tokens_in", "tokens_out", "usd_online",
                                                                "usd_batch", "hours")}
        out["usd_configured"] = sum(s.usd_batch if s.mode == "batch" else s.usd_online for s in steps)
        return out

    def by_round(self) -> dict[int, list[Step]]:
        out: dict[int, list[Step]] = {}
        for s in self.steps:
            out.setdefault(s.round, []).append(s)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config, "rounds": self.rounds, "final_imitation": self.final_imitation,
                "steps": [asdict(s) for s in self.steps], "total": self.total(),
                "by_round": {r: self.total(st) for r, st in self.by_round().items()},
                "assumptions": self.assumptions, "warnings": self.warnings, "calibrated": self.calibrated,
                "control": self.control,
                "memory": {k: v for k, v in (self.memory or {}).items() if k != "text"} or None}


class _Templates:
    """What lion.answers.teacher_messages needs of a RunContext: templates by name."""

    def __init__(self, cfg: LionConfig) -> None:
        self.cfg = cfg
        self._t: dict[str, Template] = {}

    def template(self, name: str) -> Template:
        if name not in self._t:
            self._t[name] = load_template(name, self.cfg.prompts_dir)
        return self._t[name]


@dataclass
class _Lengths:
    teacher_out: float
    referee_out: float
    generator_out: float
    judge_out: float
    accept: float
    referee_retry: float
    student_match: float = 0.0  # share of student answers identical to the teacher's: both orders are one call


# --------------------------------------------------------------------------------------------- lengths


def _offline_lengths(cfg: LionConfig, tpl: _Templates, pool: list[Instruction], counter: TokenCounter,
                     assumptions: list[str]) -> _Lengths | None:
    """Answer a sample of the real prompts with the offline world's responder (no server, no cost)."""
    if not cfg.sim.enabled:
        return None
    from .answers import teacher_messages
    from .context import sim_responder
    from .filters import CandidateFilter, load_eval_questions
    from .generation import parse_task
    from .referee import parse_verdict, referee_messages

    responder = sim_responder(cfg)
    if getattr(responder, "costly", False):  # a real model (sim.responder: hf): too slow to sample for a plan
        assumptions.append(f"the local server runs a real model ({cfg.sim.responder}): answer lengths are not sampled")
        return None
    rng = random.Random(cfg.seed)
    sample = rng.sample(pool, min(SAMPLE, len(pool)))
    llm = cfg.llm

    def reply(role: RoleConfig, messages: list[dict[str, str]], seed: int = 0) -> str:
        body = {"model": role.model, "messages": messages, "max_tokens": role.max_tokens, "seed": seed or None}
        text = responder.respond(body)
        text = getattr(text, "text", text)  # a responder may reply with a Completion (lion.sim.server)
        return text[: role.max_tokens * 4]  # the server truncates at max_tokens (4 characters a token)

    answers = [reply(llm.teacher, teacher_messages(tpl, it)) for it in sample]  # type: ignore[arg-type]
    t_out = _mean(counter.text(a) for a in answers)
    student = [a[: cfg.student.infer.max_new_tokens] for a in answers]
    ref_tpl = tpl.template("referee")
    verdicts = [reply(llm.referee, referee_messages(ref_tpl, it.instruction, a, s)) for it, a, s in
                zip(sample, answers, student, strict=True)]
    r_out = _mean(counter.text(v) for v in verdicts)
    retry = sum(1 for v, a, s in zip(verdicts, answers, student, strict=True) if not parse_verdict(v, (a, s)).ok)
    gc = cfg.generation
    filt = CandidateFilter(gc, (i.instruction for i in pool), load_eval_questions(gc.decontaminate))
    gen_out, accepted, tried = [], 0, 0
    for n, it in enumerate(sample):
        kind = "hard" if n % 2 == 0 else "easy"
        t = tpl.template(f"generate_{kind}")
        text = reply(llm.generator, [{"role": "user", "content": t.render(instruction=it.instruction)}], n)
        gen_out.append(counter.text(text))
        task = parse_task(text, reply_marker(t))
        tried += 1
        if filt.check(task).ok:
            filt.accept(task)  # type: ignore[arg-type]
            accepted += 1
    assumptions.append(f"answer lengths and the generator's acceptance ({accepted}/{tried}) measured by the offline "
                       f"world's responder on {len(sample)} real prompts")
    return _Lengths(t_out, r_out, _mean(gen_out), r_out, max(accepted / max(tried, 1), 0.05),
                    retry / max(len(verdicts), 1))


def _mean(xs: Any) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


def _default_lengths(cfg: LionConfig, seeds_path: str, counter: TokenCounter, pool: list[Instruction],
                     assumptions: list[str]) -> _Lengths:
    llm = cfg.llm
    outputs = _seed_outputs(seeds_path)
    if outputs:
        t_out = min(_mean(counter.text(o) for o in outputs), llm.teacher.max_tokens)
        assumptions.append(f"teacher answers as long as the seeds' own outputs (mean {t_out:.0f} tokens)")
    else:
        t_out = llm.teacher.max_tokens / 2
        assumptions.append(f"teacher answers of half llm.teacher.max_tokens ({t_out:.0f} tokens; the seeds carry "
                           "no outputs)")
    g_out = min(_mean(counter.text(i.instruction) for i in pool) + 4, llm.generator.max_tokens)
    assumptions.append(f"referee / judge verdicts of half their max_tokens ({llm.referee.max_tokens / 2:.0f} / "
                       f"{llm.judge.max_tokens / 2:.0f} tokens), 2% of verdicts unreadable (retried); generator "
                       f"replies as long as a seed instruction ({g_out:.0f} tokens), 80% of them accepted")
    return _Lengths(t_out, llm.referee.max_tokens / 2, g_out, llm.judge.max_tokens / 2, 0.8, 0.02)


def _seed_outputs(path: str) -> list[str]:
    """The `output` texts of an Alpaca-style seed file (or Self-Instruct instances), if it has them."""
    p = Path(path)
    if not p.is_file() or p.suffix not in (".json", ".jsonl"):
        return []
    try:
        text = p.read_text(encoding="utf-8")
        rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines()
                                                                         if x.strip()]
    except (OSError, ValueError):
        return []
    out = []
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, dict):
            o = row.get("output")
            if o is None and isinstance(row.get("instances"), list) and row["instances"]:
                o = row["instances"][0].get("output") if isinstance(row["instances"][0], dict) else None
            if isinstance(o, str) and o.strip():
                out.append(o)
    return out


# --------------------------------------------------------------------------------------------- the loop's calls


def _wave_requests(wanted: int, accept: float, factor: float, batch_size: int) -> tuple[float, int]:
    """Expected generator requests and waves for one kind (lion.generation's wave rule)."""
    if wanted <= 0:
        return 0.0, 0
    budget, need, sent, waves = math.ceil(wanted * factor), float(wanted), 0.0, 0
    while need > 0.5 and sent < budget:
        n = min(math.floor(need) + math.floor(need) // 4 + 1, budget - sent, batch_size)
        sent += n
        need -= min(need, accept * n)
        waves += 1
    return sent, waves


class _Planner:
    def __init__(self, cfg: LionConfig, config_name: str, latency_s: float | None, seed_count: int | None,
                 student_match: float = 0.0) -> None:
        self.cfg = cfg
        self.counter = TokenCounter(cfg.llm.chars_per_token, cfg.llm.tokenizer)
        self.tpl = _Templates(cfg)
        self.plan = Plan(config_name, cfg.rounds, cfg.final_imitation)
        self.latency_s = latency_s if latency_s is not None else (cfg.sim.latency_ms / 1000 if cfg.sim.enabled
                                                                   else 5.0)
        self.seed_count = seed_count
        if not 0.0 <= student_match <= 1.0:
            raise ConfigError(f"--student-match: must be between 0 and 1, got {student_match}")
        self.student_match = student_match

    def _step(self, r: int, phase: str, role: str, calls: float, prompt: float, out: float, batches: int = 1) -> None:
        if calls <= 0:
            return
        rc = self.cfg.llm.role(role)
        price = self.cfg.llm.prices.get(rc.model)
        tin, tout = calls * prompt, calls * min(out, rc.max_tokens)
        # the ledger's own rule (lion.teachers.pricing); no prompt-cache read is predicted
        usd = tokens_usd(price, rc.model, tin, tout)
        minutes = {"rpm": calls / rc.rpm, "tpm": calls * (prompt + rc.max_tokens) / rc.tpm,
                   "in_flight": calls * self.latency_s / rc.max_in_flight / 60}
        binds = max(minutes, key=lambda k: minutes[k])
        self.plan.steps.append(Step(r, phase, role, calls, tin, tout, calls * (prompt + rc.max_tokens), usd,
                                    usd * (price.batch_discount if price else 0.5), minutes[binds] / 60, binds,
                                    batches, rc.mode, requests=calls))

    def build(self, gpu_gb: float | None, calibrate: str | Path | None = None) -> Plan:
        """The plan; gpu_gb None leaves out the student's memory estimate."""
        cfg, plan, counter = self.cfg, self.plan, self.counter
        plan.assumptions.extend(cfg.llm.notes())
        plan.assumptions.extend(pricing_notes(cfg.llm.prices, [cfg.llm.role(r).model for r in ROLES]))
        from .answers import teacher_messages
        from .referee import referee_messages

        pc = cfg.pools
        try:
            train, _ = load_instructions(pc.train_seed, pc.limit)
        except DataError as e:
            raise DataError(f"pools.train_seed: {e}; the plan renders its prompts from the real seed pool: point "
                            "pools.train_seed at it, or at a sample of it with --seed-count N (the pool's size)") from None
        cache = list(train)
        if pc.cache_seed and pc.cache_seed != pc.train_seed:
            extra, _ = load_instructions(pc.cache_seed, pc.limit)
            ids = {i.id for i in train}
            cache = train + [i for i in extra if i.id not in ids]
        scale = self.seed_count / len(train) if self.seed_count else 1.0
        if self.seed_count:
            plan.assumptions.append(f"a seed pool of {self.seed_count:,} instructions like the {len(train)} in "
                                    f"{pc.train_seed} (--seed-count)")
        lengths = _offline_lengths(cfg, self.tpl, train, counter, plan.assumptions) or \
            _default_lengths(cfg, pc.train_seed, counter, train, plan.assumptions)
        n_train, n_cache = len(train) * scale, len(cache) * scale
        teacher_prompt = _mean(counter.prompt(tuple((m["role"], m["content"]) for m in
                                                    teacher_messages(self.tpl, i))) for i in train)  # type: ignore[arg-type]
        inst_tokens = _mean(counter.text(teacher_request(i.instruction, i.input)) for i in train)
        student_out = min(lengths.teacher_out, cfg.student.infer.max_new_tokens)
        ref_tpl = self.tpl.template("referee")
        ref_base = counter.prompt(tuple((m["role"], m["content"]) for m in referee_messages(ref_tpl, "", "", "")))
        referee_prompt = ref_base + inst_tokens + lengths.teacher_out + student_out
        gen_base = _mean(counter.prompt((("user", self.tpl.template(f"generate_{k}").render(instruction="")),))
                         for k in ("hard", "easy"))
        gen_prompt = gen_base + _mean(counter.text(i.instruction) for i in train)
        gc, dc = cfg.generation, cfg.discrimination
        from .generation import generation_targets

        n_fresh = round(cfg.pools.fresh_share * (gc.n_hard + gc.n_easy))
        want = generation_targets(gc.n_hard, gc.n_easy, n_fresh)
        hard, w_h = _wave_requests(want["hard"], lengths.accept, gc.max_attempts_factor, gc.batch_size)
        easy, w_e = _wave_requests(want["easy"], lengths.accept, gc.max_attempts_factor, gc.batch_size)
        n_new = min(want["hard"], lengths.accept * hard) + min(want["easy"], lengths.accept * easy) + n_fresh
        if n_fresh:
            plan.assumptions.append(f"{n_fresh:,} of each round's new instructions from the seed file's unused rows "
                                    "(pools.fresh_share), the rest generated")
        # the referee judges the Cache Pool only for a referee-based split, and a shadow referee its sample of it
        base = dc.learnable_base if dc.selector == "learnable" else dc.selector
        referee_share = (1.0 if base == "referee" else 0.0) + (
            dc.shadow_sample if "referee" in dc.shadow_selectors else 0.0)
        if referee_share != 1.0:
            plan.assumptions.append(f"the referee judges {referee_share:.0%} of the Cache Pool (discrimination.selector "
                                    f"{dc.selector}{', a shadow referee' if 'referee' in dc.shadow_selectors else ''})")
        retry = 1 + lengths.referee_retry
        # a pair whose two answers are identical shows the same prompt in both orders: the gateway sends it once
        orders = 2 - self.student_match
        if self.student_match:
            plan.assumptions.append(f"{self.student_match:.0%} of the student's answers identical to the teacher's "
                                    "(--student-match): their two orders are one call")
        else:
            plan.assumptions.append("no student answer identical to the teacher's (each pair judged in both orders: "
                                    "an upper bound; --student-match F when short exact answers are expected, or "
                                    "--calibrate on a pilot run)")
        eval_q = self._eval_questions(plan.assumptions)
        judge_tpl = self.tpl.template(cfg.eval.judge_template) if eval_q else None

        control_free_answers = self._control_supply(train, cache, last_round=cfg.rounds + (
            1 if cfg.final_imitation and cfg.rounds > 0 else 0))
        j_base = 0.0
        if judge_tpl is not None:
            j_base = counter.prompt(tuple((m["role"], m["content"]) for m in referee_messages(judge_tpl, "", "", "")))
        answered = 0.0  # Train Pool instructions the teacher answered so far
        cache_n = n_cache
        last = cfg.rounds + (1 if cfg.final_imitation and cfg.rounds > 0 else 0)
        for r in range(1, last + 1):
            train_new = n_train if r == 1 else n_new
            self._step(r, "imitation", "teacher", train_new, teacher_prompt, lengths.teacher_out)
            answered += train_new
            if eval_q and judge_tpl is not None:
                q_prompt, q_tokens = eval_q
                n_q = len(q_prompt)
                if r == 1 and not cfg.eval.reference_answers:
                    self._step(r, "eval", "teacher", n_q, _mean(q_prompt), lengths.teacher_out)
                self._step(r, "eval", "judge", orders * n_q * retry,
                           j_base + q_tokens + lengths.teacher_out + student_out, lengths.judge_out,
                           batches=math.ceil(retry))
            if cfg.eval.control != "none" and r >= 2:  # the control student (lion.control) from round 2
                if cfg.eval.control == "self_instruct":
                    self._step(r, "control-generation", "generator", hard + easy, gen_prompt, lengths.generator_out,
                               batches=max(w_h, w_e))
                if not control_free_answers:
                    self._step(r, "control-imitation", "teacher", n_new, teacher_prompt, lengths.teacher_out)
                if eval_q and judge_tpl is not None:
                    self._step(r, "control-eval", "judge", orders * len(eval_q[0]) * retry,
                               j_base + eval_q[1] + lengths.teacher_out + student_out, lengths.judge_out,
                               batches=math.ceil(retry))
            if r > cfg.rounds:
                break
            if r == 1:
                self._step(r, "discrimination", "teacher", n_cache - n_train, teacher_prompt, lengths.teacher_out)
            if referee_share:
                self._step(r, "discrimination", "referee", orders * cache_n * retry * referee_share, referee_prompt,
                           lengths.referee_out, batches=1 + (1 if lengths.referee_retry > 0 else 0))
            self._step(r, "generation", "generator", hard + easy, gen_prompt, lengths.generator_out,
                       batches=max(w_h, w_e))
            cache_n += n_new
        plan.assumptions.append(f"{n_new:,.0f} new instructions per round (of {want['hard'] + want['easy'] + n_fresh:,} wanted) from "
                                f"{hard + easy:,.0f} generator requests in {max(w_h, w_e)} waves")
        plan.assumptions.append(f"online hours at each role's rpm / tpm / max_in_flight with {self.latency_s:g} s a "
                                "call; no prompt-cache discount")
        if calibrate is not None:
            self._calibrate(Path(calibrate))
        k = cfg.llm.teacher.top_logprobs
        if k:
            tokens = sum(st.tokens_out for st in plan.steps if st.role == "teacher")
            per = logprobs_bytes_per_token(k)
            plan.assumptions.append(
                f"llm.teacher.top_logprobs {k}: ~{per:.0f} bytes per teacher answer token, kept twice (call cache and "
                f"answer store): ~{2 * per * tokens / 1e9:,.2f} GB for the {tokens:,.0f} answer tokens planned "
                "(bytes per token measured by bench/topk_kd.py)")
        control = [st for st in plan.steps if st.phase.startswith("control-")]
        if control:
            t = plan.total(control)
            plan.control = {"rule": cfg.eval.control, **t}
            plan.assumptions.append(
                f"the control student (eval.control: {cfg.eval.control}) from round 2, as many new instructions as "
                f"the loop's: it adds {t['calls']:,.0f} calls, ${t['usd_configured']:,.4f} in the configured modes "
                f"(${t['usd_online']:,.4f} online, ${t['usd_batch']:,.4f} in batch mode), {t['hours']:,.2f} h")
        self._warn()
        if gpu_gb is None:
            return plan
        try:
            from .memplan import memory_report

            plan.memory = memory_report(cfg.student, gpu_gb)
            if not plan.memory["fits"]:
                plan.warnings.append(f"the student's training does not fit {gpu_gb:g} GB per device: see below")
        except (ConfigError, ImportError) as e:
            plan.assumptions.append(f"no GPU memory estimate: {e}")
        return plan

    def _control_supply(self, train: list[Instruction], cache: list[Instruction], last_round: int) -> bool:
        """eval.control: plain: warn when the seed files hold fewer unused instructions than the rounds may draw
        (the run refuses to start then); True when the drawn rows' own answers are the teacher's (no call)."""
        cfg = self.cfg
        if cfg.eval.control != "plain":
            return False
        pc = cfg.pools
        used = {i.id for i in cache} | {i.id for i in train}
        every, _ = load_instructions(pc.train_seed)
        if pc.cache_seed and pc.cache_seed != pc.train_seed:
            every += load_instructions(pc.cache_seed)[0]
        unused = len({i.id for i in every} - used)
        need = (cfg.generation.n_hard + cfg.generation.n_easy) * max(0, last_round - 1)
        if unused < need:
            self.plan.warnings.append(
                f"eval.control: plain needs up to {need:,} seed instructions no pool has used and the seed files hold "
                f"{unused:,} beyond the pools: the run would refuse to start (a larger seed file, a smaller "
                "pools.limit, fewer rounds, or eval.control: self_instruct)")
        free = pc.seed_answers == "teacher" and bool(_seed_outputs(pc.train_seed))
        self.plan.assumptions.append(
            f"the plain control draws from {unused:,} unused seed instructions"
            + ("; their own answers are the teacher's (pools.seed_answers: teacher): no teacher call" if free else ""))
        return free

    def _calibrate(self, run_dir: Path) -> None:
        """Scale each step by what the plan missed on a measured run (a pilot, or this run's finished rounds).

        The pilot's own config (RUN/config.yaml) is planned with the same options; per round, role and phase,
        measured / planned calls, tokens in, tokens out and USD (from the usage snapshot in each finished round's
        metrics.json) multiply this plan's step. Later rounds than the pilot has take its last round with that
        role and phase; a step the pilot never had stays as planned."""
        from .layout import RunLayout

        layout = RunLayout(run_dir)
        if not layout.config.is_file():
            raise ConfigError(f"--calibrate: {layout.config} not found (name a run directory that has run a round)")
        measured = measured_rounds(run_dir)
        if not measured:
            raise ConfigError(f"--calibrate: {run_dir} has no finished round (no round_*/metrics.json with usage)")
        pilot_cfg = load_config(str(layout.config))
        pilot = _Planner(pilot_cfg, str(layout.config), self.latency_s, None, self.student_match).build(None)
        planned: dict[tuple[int, str, str], Step] = {(st.round, st.role, st.phase): st for st in pilot.steps}
        factors: dict[tuple[int, str, str], dict[str, float]] = {}
        for (r, role, phase), m in measured.items():
            st = planned.get((r, role, phase))
            if st is None or st.calls <= 0:
                continue
            usd = st.usd_batch if st.mode == "batch" else st.usd_online
            factors[(r, role, phase)] = {
                "calls": m["calls"] / st.calls,
                "tokens_in": m["tokens_in"] / st.tokens_in if st.tokens_in else 1.0,
                "tokens_out": m["tokens_out"] / st.tokens_out if st.tokens_out else 1.0,
                "usd": m["usd"] / usd if usd else 1.0}
        rounds_of: dict[tuple[str, str], list[int]] = {}  # (role, phase) -> the pilot's rounds with a factor
        for r, role, phase in sorted(factors):
            rounds_of.setdefault((role, phase), []).append(r)
        for s in self.plan.steps:
            known = [r for r in rounds_of.get((s.role, s.phase), []) if r <= s.round]
            if not known:
                continue
            f = factors[(known[-1], s.role, s.phase)]
            s.calls *= f["calls"]
            s.tokens_in *= f["tokens_in"]
            s.tokens_out *= f["tokens_out"]
            s.tpm_tokens *= f["calls"]
            s.hours *= f["calls"]
            s.usd_online *= f["usd"]
            s.usd_batch *= f["usd"]
        share = {f"{role}/{phase}": factors[(rs[-1], role, phase)]["calls"] for (role, phase), rs in rounds_of.items()}
        last = max(r for r, _, _ in measured)
        self.plan.calibrated = {"run": str(run_dir), "rounds": sorted({r for r, _, _ in measured}), "factors": {
            f"{r}/{role}/{phase}": {k: round(v, 4) for k, v in f.items()} for (r, role, phase), f in
            sorted(factors.items())}}
        self.plan.assumptions.append(
            f"calibrated on {run_dir} (rounds 1-{last} measured): each step scaled by measured / planned of the same "
            f"round, role and phase there (later rounds by its last one); paid calls per planned call in its last "
            f"rounds: " + ", ".join(f"{k} {v:.2f}" for k, v in share.items()))

    def _eval_questions(self, assumptions: list[str]) -> tuple[list[float], float] | None:
        """(prompt tokens of each evaluation question's teacher call, mean question tokens), or None."""
        ec = self.cfg.eval
        if not ec.every_round:
            return None
        from .answers import teacher_messages
        from .context import offline_world
        from .questions import load_questions

        spec, world = ec.questions or "oracle", offline_world(self.cfg)
        heldout = world.heldout(ec.oracle_per_family, ec.oracle_seed) if spec == "oracle" and world else ()
        qs = load_questions(spec, heldout=heldout, limit=ec.max_questions)
        assumptions.append(f"{len(qs)} evaluation questions judged in both orders after every imitation")
        prompts = [self.counter.prompt(tuple((m["role"], m["content"]) for m in teacher_messages(self.tpl, q)))  # type: ignore[arg-type]
                   for q in qs]
        return prompts, _mean(self.counter.text(q.text) for q in qs)

    def _warn(self) -> None:
        plan, llm = self.plan, self.cfg.llm
        total = plan.total()
        if llm.budget_usd is not None and total["usd_configured"] > llm.budget_usd:
            plan.warnings.append(f"the plan costs ${total['usd_configured']:,.2f} in the configured modes, more than "
                                 f"llm.budget_usd ${llm.budget_usd:,.2f}: the run would stop (exit 3) before the end"
                                 + ("" if total["usd_batch"] > llm.budget_usd else
                                    f"; in batch mode it would cost ${total['usd_batch']:,.2f}"))
        for r, steps in plan.by_round().items():
            hours = sum(s.hours for s in steps if s.mode == "online")
            if hours > DAY_H:
                slow = max(steps, key=lambda s: s.hours)
                plan.warnings.append(f"round {r} takes {hours:,.1f} h online (> a day); the slowest part is "
                                     f"{slow.role} in {slow.phase}, bound by llm.{slow.role}.{slow.binds}")
        from .config import configured_models
        from .retirements import retirement_warnings

        plan.warnings += retirement_warnings(configured_models(self.cfg))
        for s in plan.steps:
            if s.mode == "batch" and s.batches > 3:
                plan.warnings.append(f"round {s.round} {s.phase}: {s.batches} batches one after another in batch mode "
                                     "(each may take up to 24 h); raise generation.batch_size to send fewer waves")
                break


def logprobs_bytes_per_token(k: int) -> float:
    """Disk bytes per answer token of one logprobs record (lion.teachers.logprobs) at K alternatives: the line through
    what bench/topk_kd.py measured on SmolLM2's answers (29.5 at K = 5, 98.8 at K = 20)."""
    return 29.5 + (98.8 - 29.5) * (k - 5) / 15


def make_plan(cfg: LionConfig, config_name: str = "", *, gpu_gb: float = 80.0, latency_s: float | None = None,
              seed_count: int | None = None, student_match: float = 0.0, calibrate: str | Path | None = None) -> Plan:
    return _Planner(cfg, config_name, latency_s, seed_count, student_match).build(gpu_gb, calibrate)


def measured_rounds(run_dir: str | Path) -> dict[tuple[int, str, str], dict[str, float]]:
    """What each finished round of a run paid, per (round, role, phase): calls, cached replays, tokens, USD.

    Each round's metrics.json holds the run's usage ledger as it stood when the round ended; a round's share is
    its snapshot less the one before. Rounds are read from 1 up to the first without a snapshot."""
    from .layout import RunLayout

    layout, out = RunLayout(run_dir), {}
    before: dict[tuple[str, str], dict[str, float]] = {}
    r = 1
    while (path := layout.round(r).metrics).is_file():
        usage = json.loads(path.read_text()).get("usage")
        if not usage:
            break
        now: dict[tuple[str, str], dict[str, float]] = {}
        for row in usage.get("by", []):
            acc = now.setdefault((row["role"], row["phase"]), dict.fromkeys(("calls", "cached", "tokens_in",
                                                                              "tokens_out", "usd"), 0.0))
            for k in acc:
                acc[k] += row.get(k, 0)
        for key, acc in now.items():
            prev = before.get(key, {})
            delta = {k: v - prev.get(k, 0.0) for k, v in acc.items()}
            if delta["calls"] or delta["cached"]:
                out[(r, *key)] = delta
        before, r = now, r + 1
    return out


# --------------------------------------------------------------------------------------------- output


def _n(x: float) -> str:
    return f"{x:,.0f}"


def format_plan(plan: Plan) -> str:
    w = max([15, *(len(s.phase) for s in plan.steps)])  # the phase column (control-imitation is 17 wide)
    head = f"{'round':>5} {'phase':<{w}} {'role':<9} {'mode':<6} {'calls':>9} {'tokens in':>13} {'tokens out':>12} " \
           f"{'USD online':>11} {'USD batch':>10} {'hours':>7} {'binds':<9} {'batches':>7}"
    lines = [f"plan for {plan.config or 'the config'}: {plan.rounds} rounds"
             + (" + the final imitation" if plan.final_imitation else ""), head, "-" * len(head)]
    for r, steps in plan.by_round().items():
        for s in steps:
            lines.append(f"{s.round:>5} {s.phase:<{w}} {s.role:<9} {s.mode:<6} {_n(s.calls):>9} {_n(s.tokens_in):>13} "
                         f"{_n(s.tokens_out):>12} {s.usd_online:>11.4f} {s.usd_batch:>10.4f} {s.hours:>7.2f} "
                         f"{s.binds:<9} {s.batches:>7}")
        t = plan.total(steps)
        lines.append(f"{r:>5} {'(round total)':<{w}} {'':<9} {'':<6} {_n(t['calls']):>9} {_n(t['tokens_in']):>13} "
                     f"{_n(t['tokens_out']):>12} {t['usd_online']:>11.4f} {t['usd_batch']:>10.4f} {t['hours']:>7.2f}")
    t = plan.total()
    lines += ["-" * len(head),
              f"{'all':>5} {'':<{w}} {'':<9} {'':<6} {_n(t['calls']):>9} {_n(t['tokens_in']):>13} "
              f"{_n(t['tokens_out']):>12} {t['usd_online']:>11.4f} {t['usd_batch']:>10.4f} {t['hours']:>7.2f}",
              f"USD in the configured modes: {t['usd_configured']:.4f}"]
    if plan.control:
        c = plan.control
        lines.append(f"of which the control student (eval.control: {c['rule']}): {_n(c['calls'])} calls, USD "
                     f"{c['usd_configured']:.4f} in the configured modes ({c['usd_online']:.4f} online, "
                     f"{c['usd_batch']:.4f} batch)")
    lines += ["assumptions:"] + [f"  - {a}" for a in plan.assumptions]
    if plan.memory:
        lines.append(plan.memory["text"])
    lines += [f"WARNING: {w}" for w in plan.warnings]
    return "\n".join(lines)


def compare(plan: Plan, run_dir: str | Path) -> dict[str, Any]:
    """Planned vs measured (RUN/usage.json): requests, paid calls, tokens in / out, USD, each with measured / planned.

    The plan counts requests; the ledger counts paid calls and cache replays apart (`cached`): a pair whose two
    answers are identical, or a student answer unchanged since the round before, is a prompt the cache already
    holds. `requests` = paid + replayed is what the plan's call model predicts; calls, tokens and USD are lower by
    the share the cache served."""
    from .layout import RunLayout

    path = RunLayout(run_dir).usage
    if not path.is_file():
        raise ConfigError(f"--compare: {path} not found (run the config first, or name another run directory)")
    usage = json.loads(path.read_text())
    measured = usage["total"]
    t = plan.total()
    requests = measured["calls"] + measured.get("cached", 0)
    pairs = {"requests": (sum(s.requests for s in plan.steps), requests),
             "calls": (t["calls"], measured["calls"]), "tokens_in": (t["tokens_in"], measured["tokens_in"]),
             "tokens_out": (t["tokens_out"], measured["tokens_out"]), "usd": (t["usd_configured"], measured["usd"])}
    out: dict[str, Any] = {k: {"planned": round(p, 4), "measured": m, "ratio": round(m / p, 4) if p else None}
                           for k, (p, m) in pairs.items()}
    out["served_by_cache"] = round(measured.get("cached", 0) / requests, 4) if requests else 0.0
    by: dict[str, dict[str, float]] = {}

    def row(key: str) -> dict[str, float]:
        return by.setdefault(key, {"planned_calls": 0.0, "planned_requests": 0.0, "measured_calls": 0,
                                   "measured_requests": 0,
                                   "planned_tokens_in": 0.0, "measured_tokens_in": 0})

    for s in plan.steps:
        b = row(f"{s.role}/{s.phase}")
        b["planned_calls"] += s.calls
        b["planned_requests"] += s.requests
        b["planned_tokens_in"] += s.tokens_in
    for r in usage.get("by", []):
        b = row(f"{r['role']}/{r['phase']}")
        b["measured_calls"] += r["calls"]
        b["measured_requests"] += r["calls"] + r.get("cached", 0)
        b["measured_tokens_in"] += r["tokens_in"]
    out["by"] = by
    out["calibrated_on"] = plan.calibrated["run"] if plan.calibrated else None
    return out


def format_compare(cmp: dict[str, Any]) -> str:
    lines = [f"{'':<34} {'planned':>14} {'measured':>14} {'measured/planned':>17}"]
    for k, v in cmp.items():
        if not isinstance(v, dict) or "ratio" not in v:
            continue
        ratio = "-" if v["ratio"] is None else f"{v['ratio']:.3f}"
        lines.append(f"{k:<34} {v['planned']:>14,.4f} {v['measured']:>14,.4f} {ratio:>17}")
    for k, v in cmp.get("by", {}).items():
        for what in ("requests", "calls"):
            m, p = v[f"measured_{what}"], v[f"planned_{what}"]
            ratio = m / p if p else float("nan")
            lines.append(f"{what + ' ' + k:<34} {p:>14,.1f} {m:>14,} {ratio:>17.3f}")
    share = f"served by the call cache: {cmp.get('served_by_cache', 0):.1%} of the requests (identical answer pairs, " \
            "unchanged student answers)"
    lines.append(share + (f"; the plan was calibrated on {cmp['calibrated_on']}" if cmp.get("calibrated_on") else
                          ": a plan that is not calibrated (--calibrate) does not predict it, so its calls, tokens "
                          "and USD are upper bounds"))
    return "\n".join(lines)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lion.plan", description=(__doc__ or "").split("\n\n")[0])
    add_config_args(p)
    add_plan_args(p)
    p.add_argument("--rounds", type=int, default=None, help="number of rounds (overrides the config's `rounds`)")
    p.add_argument("--compare", metavar="RUN_DIR", default=None,
                   help="also print measured vs planned from RUN_DIR/usage.json")
    p.add_argument("--json", action="store_true", help="end with the plan as one JSON line")
    return p


def add_plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpu-gb", type=float, default=80.0, help="memory of one GPU in GB for the student estimate")
    p.add_argument("--latency-s", type=float, default=None,
                   help="seconds an API call takes (default: sim.latency_ms offline, else 5)")
    p.add_argument("--seed-count", type=int, default=None,
                   help="plan for a seed pool of N instructions like those in pools.train_seed")
    p.add_argument("--calibrate", metavar="RUN_DIR", default=None,
                   help="scale the plan by what it missed on a measured run (a pilot of a smaller config, or this "
                        "run's finished rounds): per round, role and phase, measured / planned calls, tokens, USD")
    p.add_argument("--student-match", type=float, default=0.0, metavar="F",
                   help="share (0-1) of student answers expected to be identical to the teacher's: both orders of "
                        "such a pair are one call (default 0: an upper bound)")


def print_plan(cfg: LionConfig, config_name: str, args: argparse.Namespace) -> Plan:
    plan = make_plan(cfg, config_name, gpu_gb=args.gpu_gb, latency_s=args.latency_s, seed_count=args.seed_count,
                     student_match=args.student_match, calibrate=args.calibrate)
    print(format_plan(plan), flush=True)
    return plan


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    overrides = list(args.overrides) + ([f"rounds={args.rounds}"] if args.rounds is not None else [])
    cfg = load_config(args.config, overrides)
    plan = print_plan(cfg, args.config, args)
    out = plan.to_json()
    if args.compare:
        out["compare"] = compare(plan, args.compare)
        print(f"\nplan vs the ledger of {args.compare}:\n{format_compare(out['compare'])}")
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    from .errors import cli_main

    cli_main(main, sys.argv[1:])
