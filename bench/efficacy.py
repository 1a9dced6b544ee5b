"""Does the loop pay? Lion against the right baselines in the offline world, paired by seed (issue 13).

    python bench/efficacy.py                      # everything: map, trunks, arms, report (resumable; hours)
    python bench/efficacy.py --stage map          # only the learnability map
    python bench/efficacy.py --stage report       # tables, plots and the JSON line from what has finished
        [--seeds 10] [--workers 2] [--workdir runs/efficacy] [--arms lion plain ...] [--quick]

The design is written down, before any result, in docs/efficacy.md; this file carries it out.

Per seed s: a seed pool of 1000 instructions from the world's sampler, two held-out sets drawn apart from it
(600 from the seed distribution: the primary metric; 50 per family: the family macro-average), and one shared
round-1 student (the *trunk*: imitation on the seed pool, `--trunk-steps` steps). Every arm starts from a copy
of the trunk, adds 600 new instructions per round for two rounds (Train Pools accumulate unless the arm says
otherwise; the student continues from the previous round unless the arm says otherwise), and trains
`--steps` steps per round: equal teacher answers, equal training steps, the same initial student.

Arms (see ARMS): lion (the paper's referee), self_instruct (same generator and hard/easy prompt mix, seeds drawn
uniformly: no referee), plain (the world's sampler: plain distillation with more data), uniform (families drawn
uniformly: a reference that knows the metric), student_loss, learnable, lion_cap (referee + a 20% category cap);
factors on lion: lion_replace (the paper's replace), lion_retrain (each round from the base model), lion_unseen
(the referee judges only Cache Pool items never trained on; 500 extra unseen seeds in the Cache Pool).

Every job (trunk, map point, arm) runs in its own process and writes its result file last, so a stopped run
continues where it stopped. The held-out overlap with every pool of every arm is counted and must be 0.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lion.config import LionConfig, load_config  # noqa: E402
from lion.layout import RunLayout  # noqa: E402
from lion.records import Instruction, read_jsonl, read_pool, write_json, write_jsonl  # noqa: E402
from lion.sim import tasks as W  # noqa: E402

SEED_POOL = 1000
UNSEEN_EXTRA = 500  # lion_unseen: Cache Pool seeds the student never trains on
NATURAL_HELDOUT = 600  # primary metric: questions drawn like the seeds
PER_FAMILY_HELDOUT = 50  # secondary metric: family macro-average
MAP_SIZES = (50, 200, 800)
MAP_STEPS = 150
LEARNABLE_AT = 0.5  # a family is learnable when the map's 800-example point reaches this accuracy
STUDENT = {"vocab": "char", "hidden": 96, "layers": 3, "heads": 4, "max_position_embeddings": 256}

# arm -> (config overrides, how new instructions are chosen: "loop" | "plain" | "uniform")
ARMS: dict[str, tuple[list[str], str]] = {
    "lion": ([], "loop"),
    "self_instruct": (["discrimination.selector=none"], "loop"),
    "plain": ([], "plain"),
    "uniform": ([], "uniform"),
    "student_loss": (["discrimination.selector=student_loss"], "loop"),
    "learnable": (["discrimination.selector=learnable"], "loop"),
    "lion_cap": (["generation.max_category_share=0.2"], "loop"),
    "lion_replace": (["pools.train_pool=replace"], "loop"),
    "lion_retrain": (["student.continue_from_previous=false"], "loop"),
    "lion_unseen": (["discrimination.only_unseen=true"], "loop"),
}
MAIN_ARMS = ("lion", "self_instruct", "plain", "uniform", "student_loss", "learnable", "lion_cap")
ROUNDS = 2  # adversarial rounds; + the final imitation = 3 students per arm (round 1's is the shared trunk)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/efficacy.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", choices=("all", "map", "arms", "report"), default="all")
    p.add_argument("--seeds", type=int, default=10, help="seeds 0 .. N-1")
    p.add_argument("--workers", type=int, default=2, help="jobs run in parallel (one CPU thread each)")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--steps", type=int, default=200, help="training steps per round of every arm")
    p.add_argument("--trunk-steps", type=int, default=400, help="training steps of the shared round-1 student")
    p.add_argument("--workdir", default=str(ROOT / "runs" / "efficacy"))
    p.add_argument("--out", default=str(ROOT / "docs" / "efficacy"), help="where the report's plots and tables go")
    p.add_argument("--quick", action="store_true", help="a minutes-long trial: 2 seeds, 30 steps, 3 arms, no map")
    p.add_argument("--job", help=argparse.SUPPRESS)  # internal: run one job (a JSON spec) in this process
    return p


# --------------------------------------------------------------------------------------------- the world


def seed_dir(work: Path, seed: int) -> Path:
    return work / f"seed_{seed:02d}"


def world_files(work: Path, seed: int) -> dict[str, Path]:
    """The seed's seed pool, extra unseen Cache Pool seeds and held-out sets (written once, deterministic)."""
    d = seed_dir(work, seed)
    files = {k: d / f"{k}.jsonl" for k in ("seeds", "cache_seeds", "heldout_natural", "heldout_family", "heldout")}
    if all(f.exists() for f in files.values()):
        return files
    seeds = W.seed_pool(SEED_POOL, seed)
    taken = {str(r["instruction"]) for r in seeds}
    rng = random.Random(f"efficacy:natural-heldout:{seed}")
    natural: list[dict[str, Any]] = []
    while len(natural) < NATURAL_HELDOUT:
        t = W.sample_task(rng)
        if t.instruction not in taken:
            taken.add(t.instruction)
            natural.append({"instruction": t.instruction, "answer": t.answer, "meta": t.meta})
    family = W.heldout_set(PER_FAMILY_HELDOUT, 10_000 + seed, exclude=taken)
    taken |= {str(r["instruction"]) for r in family}
    rng = random.Random(f"efficacy:unseen:{seed}")
    extra: list[dict[str, Any]] = []
    while len(extra) < UNSEEN_EXTRA:
        t = W.sample_task(rng)
        if t.instruction not in taken:
            taken.add(t.instruction)
            extra.append({"instruction": t.instruction, "meta": t.meta})
    write_jsonl(files["seeds"], seeds)
    write_jsonl(files["cache_seeds"], [*seeds, *extra])
    write_jsonl(files["heldout_natural"], natural)
    write_jsonl(files["heldout_family"], family)
    # what generation must never produce (generation.decontaminate): both held-out sets
    write_jsonl(files["heldout"], [{"instruction": r["instruction"]} for r in [*natural, *family]])
    return files


def config(work: Path, seed: int, run_dir: Path, steps: int, extra: list[str]) -> LionConfig:
    files = world_files(work, seed)
    over = [
        f"run_dir={run_dir}", f"seed={seed}", f"rounds={ROUNDS}", "final_imitation=true", f"sim.options.seed={seed}",
        f"pools.train_seed={files['seeds']}", "pools.limit=null", f"student.tiny={json.dumps(STUDENT)}",
        f"student.max_steps={steps}", "student.cpu_threads=1", "student.infer.cpu_threads=1",
        "eval.every_round=false", f"generation.decontaminate=[{files['heldout']}]", "llm.budget_usd=null",
        "generation.max_attempts_factor=6",
        *extra,
    ]  # fmt: skip
    return load_config(ROOT / "configs" / "smoke.yaml", over)


# --------------------------------------------------------------------------------------------- evaluation


def accuracy(cfg: LionConfig, student: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Exact accuracy of `student` on held-out rows (instruction + answer): overall and per family."""
    from lion.student.data import format_prompt
    from lion.student.infer import generate
    from lion.world import family_accuracy

    prompts = [format_prompt(str(r["instruction"]), fmt=cfg.student.prompt_format) for r in rows]
    outs = generate(student, prompts, cfg.student.infer, progress=False)
    return family_accuracy(W.TaskWorld(), ((str(r["instruction"]), o) for r, o in zip(rows, outs, strict=True)))


def evaluate_student(cfg: LionConfig, work: Path, seed: int, student: Path) -> dict[str, Any]:
    """Both held-out metrics of one student, cached beside it (a student is evaluated once)."""
    cache = student.with_name(student.name + ".efficacy.json")
    if cache.exists():
        return json.loads(cache.read_text())
    files = world_files(work, seed)
    nat = accuracy(cfg, student, read_jsonl(files["heldout_natural"]))
    fam = accuracy(cfg, student, read_jsonl(files["heldout_family"]))
    macro = statistics.mean(fam["accuracy"].values()) if fam["accuracy"] else None
    out = {"natural": nat["overall"], "macro": macro, "family": fam["accuracy"]}
    write_json(cache, out)
    return out


def overlap(run: RunLayout, work: Path, seed: int) -> int:
    """Held-out questions (either set) found in any Train or Cache Pool of the run: must be 0."""
    files = world_files(work, seed)
    held = {" ".join(str(r["instruction"]).split()) for f in ("heldout_natural", "heldout_family") for r in
            read_jsonl(files[f])}  # fmt: skip
    seen = set()
    for rp in run.rounds():
        for pool in (rp.train_pool, rp.cache_pool):
            if pool.exists():
                seen |= {" ".join(i.instruction.split()) for i in read_pool(pool)} & held
    return len(seen)


# --------------------------------------------------------------------------------------------- jobs


def job_trunk(work: Path, seed: int, trunk_steps: int) -> dict[str, Any]:
    """Round 1's imitation on the seed pool: the student every arm of this seed starts from."""
    from lion.context import RunContext
    from lion.imitation import imitation
    from lion.pools import prepare_round

    run_dir = seed_dir(work, seed) / "trunk"
    cfg = config(work, seed, run_dir, trunk_steps, [])
    with RunContext(cfg, progress=False) as ctx:
        prepare_round(ctx, 1)
        imitation(ctx, 1)
    return {"eval": evaluate_student(cfg, work, seed, RunLayout(run_dir).round(1).student)}


def job_map(work: Path, family: str, n: int) -> dict[str, Any]:
    """One point of the learnability map: seed 0's trunk student trained MAP_STEPS steps on n examples of one
    family (truth answers: the oracle teacher answers exactly), scored on that family's held-out questions."""
    from lion.student.train import train_student

    files = world_files(work, 0)
    trunk = seed_dir(work, 0) / "trunk"
    cfg = config(work, 0, trunk, MAP_STEPS, [])
    held = [r for r in read_jsonl(files["heldout_family"]) if r["meta"]["family"] == family]
    taken = {str(r["instruction"]) for f in ("cache_seeds", "heldout_natural", "heldout_family")
             for r in read_jsonl(files[f])}  # fmt: skip
    rng = random.Random(f"efficacy:map:{family}:{n}")
    examples: list[dict[str, str]] = []
    tries = 0
    while len(examples) < n and tries < 100 * n:
        tries += 1
        t = W.sample_task(rng, family)
        if t.instruction not in taken:
            taken.add(t.instruction)
            examples.append({"instruction": t.instruction, "input": "", "output": t.answer})
    out = work / "map" / f"{family}_{n}" / "student"
    if not (out / "lion_student.json").exists():
        train_student(cfg.student, examples, RunLayout(trunk).round(1).student, out, seed=1, progress=False)
    before = evaluate_student(cfg, work, 0, RunLayout(trunk).round(1).student)["family"].get(family)
    after = accuracy(cfg, out, held)["overall"]
    return {"family": family, "n": n, "examples": len(examples), "before": before, "after": after}


def sample_new(cfg: LionConfig, work: Path, seed: int, r: int, pool: list[Instruction], how: str) -> list[Instruction]:
    """plain / uniform arms: the round's new instructions straight from the world's sampler."""
    files = world_files(work, seed)
    taken = {i.instruction for i in pool} | {str(x["instruction"]) for x in read_jsonl(files["heldout"])}
    rng = random.Random(f"efficacy:{how}:{seed}:{r}")
    families = [f.name for f in W.FAMILIES]
    n = cfg.generation.n_hard + cfg.generation.n_easy
    out: list[Instruction] = []
    while len(out) < n:
        t = W.sample_task(rng, rng.choice(families) if how == "uniform" else None)
        if t.instruction not in taken:
            taken.add(t.instruction)
            out.append(Instruction(t.instruction, round=r, kind=how, meta=dict(t.meta)))
    return out


def run_sampler_arm(cfg: LionConfig, work: Path, seed: int, how: str) -> None:
    """The loop with discrimination and generation replaced by the world's sampler (no referee, no generator)."""
    from lion.context import RunContext
    from lion.imitation import imitation
    from lion.pools import prepare_round

    with RunContext(cfg, progress=False) as ctx:
        for r in range(1, ROUNDS + 1):
            prepare_round(ctx, r)
            imitation(ctx, r)
            rp = ctx.run.round(r)
            if not ctx.run.is_done(r, "generation"):
                new = sample_new(cfg, work, seed, r, read_pool(rp.cache_pool), how)
                write_jsonl(rp.generated, (i.to_json() for i in new))
                write_json(rp.phase_metrics("generation"), {"source": how, "accepted": {how: len(new)}})
                ctx.run.mark_done(r, "discrimination", {"skipped": f"arm {how}: no discrimination"})
                ctx.run.mark_done(r, "generation")
        prepare_round(ctx, ROUNDS + 1)
        imitation(ctx, ROUNDS + 1)


def branch_from_trunk(work: Path, seed: int, arm_dir: Path, cfg: LionConfig) -> None:
    """A copy of the trunk (round 1's pools, student, answers and call cache) under the arm's own config."""
    from lion.rundir import RunDir, fingerprint

    if RunDir(arm_dir).state.exists():
        return
    tmp = arm_dir.with_name(arm_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(seed_dir(work, seed) / "trunk", tmp)
    run = RunDir(tmp)
    run.state.unlink()
    if cfg.discrimination.only_unseen:  # the Cache Pool also holds seeds the student never trains on
        write_jsonl(run.round(1).cache_pool, read_jsonl(world_files(work, seed)["cache_seeds"]))
    write_json(run.state, {"version": 1, "fingerprint": fingerprint(cfg), "rounds_completed": 0})
    tmp.rename(arm_dir)


def job_arm(work: Path, seed: int, arm: str, steps: int) -> dict[str, Any]:
    from lion.run import lion_loop

    extra, how = ARMS[arm]
    arm_dir = seed_dir(work, seed) / "arms" / arm
    cfg = config(work, seed, arm_dir, steps, extra)
    t0 = time.time()
    branch_from_trunk(work, seed, arm_dir, cfg)
    if how == "loop":
        lion_loop(cfg, progress=False, echo=False)
    else:
        run_sampler_arm(cfg, work, seed, how)
    run = RunLayout(arm_dir)
    leaks = overlap(run, work, seed)
    if leaks:
        raise SystemExit(f"{arm_dir}: {leaks} held-out questions reached a pool; the study would be invalid")
    evals = {r: evaluate_student(cfg, work, seed, run.round(r).student) for r in range(1, ROUNDS + 2)}
    usage = json.loads(run.usage.read_text())["total"] if run.usage.exists() else {}
    new_families: dict[str, int] = {}
    for r in range(1, ROUNDS + 1):
        for row in read_jsonl(run.round(r).generated):
            fam = W.TaskWorld().family(row["instruction"]) or "unknown"
            new_families[fam] = new_families.get(fam, 0) + 1
    teacher_answers = len({row["id"] for row in read_jsonl(run.teacher_answers)})
    disc = [json.loads(run.round(r).phase_metrics("discrimination").read_text())
            if run.round(r).phase_metrics("discrimination").exists() else {} for r in range(1, ROUNDS + 1)]  # fmt: skip
    return {
        "arm": arm, "seed": seed, "eval": evals, "usd": usage.get("usd"), "calls": usage.get("calls"),
        "tokens": (usage.get("tokens_in") or 0) + (usage.get("tokens_out") or 0), "teacher_answers": teacher_answers,
        "new_families": new_families, "overlap": leaks, "seconds": round(time.time() - t0, 1),
        "hard_ratio": [d.get("hard_ratio") for d in disc], "stuck": [d.get("stuck") for d in disc],
    }  # fmt: skip


def run_job(spec: dict[str, Any]) -> dict[str, Any]:
    work = Path(spec["work"])
    if spec["kind"] == "trunk":
        return job_trunk(work, spec["seed"], spec["trunk_steps"])
    if spec["kind"] == "map":
        return job_map(work, spec["family"], spec["n"])
    return job_arm(work, spec["seed"], spec["arm"], spec["steps"])


# --------------------------------------------------------------------------------------------- scheduling


def result_path(work: Path, spec: dict[str, Any]) -> Path:
    name = {"trunk": f"trunk_s{spec.get('seed')}", "map": f"map_{spec.get('family')}_{spec.get('n')}"}.get(
        spec["kind"], f"arm_{spec.get('arm')}_s{spec.get('seed')}"
    )
    return work / "results" / f"{name}.json"


def run_pool(work: Path, specs: list[dict[str, Any]], workers: int) -> list[str]:
    """Run the specs not done yet, `workers` at a time, each in its own process; return the failures."""
    todo = [s for s in specs if not result_path(work, s).exists()]
    failures: list[str] = []
    if not todo:
        return failures
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t0, done = time.time(), 0

    def one(spec: dict[str, Any]) -> tuple[dict[str, Any], int, str]:
        log = result_path(work, spec).with_suffix(".log")
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            rc = subprocess.run([sys.executable, __file__, "--job", json.dumps(spec)], env=env, stdout=f,
                                stderr=subprocess.STDOUT).returncode  # fmt: skip
        return spec, rc, str(log)

    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        for spec, rc, log in ex.map(one, todo):
            done += 1
            left = (time.time() - t0) / done * (len(todo) - done)
            name = result_path(work, spec).stem
            status = "ok" if rc == 0 else f"FAILED (exit {rc}; {log})"
            print(f"[{done}/{len(todo)}] {name}: {status}  elapsed {time.time() - t0:.0f}s, ~{left:.0f}s left",
                  flush=True)  # fmt: skip
            if rc != 0:
                failures.append(f"{name}: {log}")
    return failures


# --------------------------------------------------------------------------------------------- report


def load_results(work: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    arms, maps = [], []
    for f in sorted((work / "results").glob("*.json")):
        row = json.loads(f.read_text())
        (maps if f.name.startswith("map_") else arms if f.name.startswith("arm_") else []).append(row)
    return arms, maps


def bootstrap_diff(a: list[float], b: list[float], n: int = 10_000, seed: int = 0) -> dict[str, float]:
    """Mean of the paired differences a - b and its 95% percentile bootstrap interval (resampling seeds)."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    rng = random.Random(seed)
    means = sorted(statistics.mean(rng.choices(d, k=len(d))) for _ in range(n))
    return {"mean": statistics.mean(d), "lo": means[int(0.025 * n)], "hi": means[int(0.975 * n) - 1], "n": len(d)}


def learnability(maps: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for m in maps:
        out.setdefault(m["family"], {"curve": {}, "before": m["before"]})["curve"][m["n"]] = m["after"]
    for v in out.values():
        top = v["curve"].get(max(MAP_SIZES))
        v["learnable"] = None if top is None else top >= LEARNABLE_AT
    return dict(sorted(out.items()))


def report(work: Path, out_dir: Path) -> dict[str, Any]:
    arms, maps = load_results(work)
    lmap = learnability(maps)
    by_arm: dict[str, dict[int, dict[str, Any]]] = {}
    for row in arms:
        by_arm.setdefault(row["arm"], {})[row["seed"]] = row
    final = str(ROUNDS + 1)
    summary: dict[str, Any] = {"arms": {}, "diff_vs_lion": {}, "diff_vs_plain": {}, "learnability": lmap}
    for arm, rows in by_arm.items():
        seeds = sorted(rows)
        per_round = {
            metric: {r: statistics.mean(rows[s]["eval"][str(r)][metric] for s in seeds) for r in range(1, ROUNDS + 2)}
            for metric in ("natural", "macro")
        }
        usd = statistics.mean(rows[s]["usd"] or 0.0 for s in seeds)
        unlearnable = {f for f, v in lmap.items() if v.get("learnable") is False}
        spent = [sum(n for f, n in rows[s]["new_families"].items() if f in unlearnable)
                 / max(1, sum(rows[s]["new_families"].values())) for s in seeds]  # fmt: skip
        share: dict[str, float] = {}
        gain: dict[str, float] = {}
        for f in sorted(lmap or {f.name: None for f in W.FAMILIES}):
            share[f] = statistics.mean(rows[s]["new_families"].get(f, 0) / max(1, sum(rows[s]["new_families"].values()))
                                       for s in seeds)  # fmt: skip
            gain[f] = statistics.mean(rows[s]["eval"][final]["family"].get(f, 0.0) - rows[s]["eval"]["1"]["family"]
                                      .get(f, 0.0) for s in seeds)  # fmt: skip
        summary["arms"][arm] = {
            "seeds": seeds, "natural": per_round["natural"], "macro": per_round["macro"], "usd": usd,
            "natural_per_usd": per_round["natural"][ROUNDS + 1] / usd if usd else None,
            "teacher_answers": statistics.mean(rows[s]["teacher_answers"] for s in seeds),
            "unlearnable_share": statistics.mean(spent) if lmap else None, "family_share": share, "family_gain": gain,
            "overlap": sum(rows[s]["overlap"] for s in seeds),
        }  # fmt: skip
    for ref, key in (("lion", "diff_vs_lion"), ("plain", "diff_vs_plain")):
        if ref not in by_arm:
            continue
        for arm, rows in by_arm.items():
            if arm == ref:
                continue
            seeds = sorted(set(rows) & set(by_arm[ref]))
            if len(seeds) < 2:
                continue
            summary[key][arm] = {
                metric: bootstrap_diff([rows[s]["eval"][final][metric] for s in seeds],
                                       [by_arm[ref][s]["eval"][final][metric] for s in seeds])
                for metric in ("natural", "macro")
            }  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "summary.json", summary)
    (out_dir / "tables.md").write_text(tables_md(summary))
    plots(summary, by_arm, out_dir)
    return summary


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _ci(d: dict[str, float]) -> str:
    return f"{100 * d['mean']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"


def tables_md(s: dict[str, Any]) -> str:
    rounds = list(range(1, ROUNDS + 2))
    lines = ["### Held-out accuracy per round (mean over seeds, %)", "",
             "| arm | seeds | " + " | ".join(f"natural r{r}" for r in rounds) + " | " +
             " | ".join(f"macro r{r}" for r in rounds) + " | USD | natural % per USD | teacher answers | "
             "new data on unlearnable families | held-out overlap |",
             "|---|---|" + "---|" * (2 * len(rounds) + 5)]  # fmt: skip
    for arm, a in s["arms"].items():
        nat = " | ".join(_pct(a["natural"][r]) for r in rounds)
        mac = " | ".join(_pct(a["macro"][r]) for r in rounds)
        per = "-" if a["natural_per_usd"] is None else f"{100 * a['natural_per_usd']:.1f}"
        lines.append(f"| {arm} | {len(a['seeds'])} | {nat} | {mac} | {a['usd']:.3f} | {per} | "
                     f"{a['teacher_answers']:.0f} | {_pct(a['unlearnable_share'])} | {a['overlap']} |")  # fmt: skip
    for key, title in (("diff_vs_lion", "lion"), ("diff_vs_plain", "plain")):
        if not s[key]:
            continue
        lines += ["", f"### Final student: difference to {title} (points, paired by seed, 95% bootstrap CI)", "",
                  "| arm | natural | macro | seeds |", "|---|---|---|---|"]  # fmt: skip
        for arm, d in s[key].items():
            lines.append(f"| {arm} | {_ci(d['natural'])} | {_ci(d['macro'])} | {d['natural']['n']} |")
    if s["learnability"]:
        lines += ["", f"### Learnability map (seed 0's round-1 student + {MAP_STEPS} steps on one family; "
                      f"held-out accuracy of that family, %)", "",
                  "| family | round-1 student | " + " | ".join(f"{n} examples" for n in MAP_SIZES) + " | learnable |",
                  "|---|---|" + "---|" * (len(MAP_SIZES) + 1)]  # fmt: skip
        for fam, v in s["learnability"].items():
            cells = " | ".join(_pct(v["curve"].get(n)) for n in MAP_SIZES)
            lines.append(f"| {fam} | {_pct(v['before'])} | {cells} | {'yes' if v['learnable'] else 'no'} |")
    if s["arms"]:
        fams = sorted(next(iter(s["arms"].values()))["family_share"])
        lines += ["", "### Share of the new instructions per family, and the family's gain from round 1 to the final "
                      "student (points)", "", "| arm | " + " | ".join(fams) + " |", "|---|" + "---|" * len(fams)]
        for arm, a in s["arms"].items():
            lines.append(f"| {arm} | " + " | ".join(f"{100 * a['family_share'][f]:.0f}% / {100 * a['family_gain'][f]:+.0f}"
                                                     for f in fams) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plots(s: dict[str, Any], by_arm: dict[str, dict[int, dict[str, Any]]], out_dir: Path) -> None:
    from lion.plots import _plt

    plt = _plt()
    rounds = list(range(1, ROUNDS + 2))
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for arm, rows in by_arm.items():
        seeds = sorted(rows)
        means, los, his = [], [], []
        for r in rounds:
            xs = [rows[k]["eval"][str(r)]["natural"] for k in seeds]
            m = statistics.mean(xs)
            half = 1.96 * statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else 0.0
            means.append(100 * m)
            los.append(100 * (m - half))
            his.append(100 * (m + half))
        ax.plot(rounds, means, marker="o", label=arm, linewidth=2.2 if arm in ("lion", "plain") else 1.2)
        ax.fill_between(rounds, los, his, alpha=0.12)
    ax.set_xticks(rounds)
    ax.set_xlabel("student (round; the last is the final imitation)")
    ax.set_ylabel("held-out accuracy, seed distribution (%)")
    ax.set_title("Held-out accuracy per round per arm (mean, 95% CI over seeds)")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(out_dir / "accuracy_per_round.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for arm, a in s["arms"].items():
        ax.scatter([a["usd"]], [100 * a["natural"][ROUNDS + 1]], s=40)
        ax.annotate(arm, (a["usd"], 100 * a["natural"][ROUNDS + 1]), fontsize=8, xytext=(4, 2),
                    textcoords="offset points")  # fmt: skip
    ax.set_xlabel("USD per run (teacher + referee + generator, made-up prices)")
    ax.set_ylabel("final held-out accuracy (%)")
    ax.set_title("Accuracy vs spend")
    fig.tight_layout()
    fig.savefig(out_dir / "accuracy_vs_usd.png", dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.job:
        spec = json.loads(args.job)
        res = run_job(spec)
        write_json(result_path(Path(spec["work"]), spec), res)
        return 0
    work = Path(args.workdir)
    seeds = list(range(2 if args.quick else args.seeds))
    arm_names = ["lion", "self_instruct", "plain"] if args.quick else args.arms
    steps, trunk_steps = (30, 30) if args.quick else (args.steps, args.trunk_steps)
    failures: list[str] = []
    t0 = time.time()
    if args.stage in ("all", "map", "arms"):
        for s in seeds:
            world_files(work, s)
        failures += run_pool(work, [{"kind": "trunk", "work": str(work), "seed": s, "trunk_steps": trunk_steps}
                                    for s in seeds], args.workers)  # fmt: skip
    if args.stage in ("all", "map") and not args.quick:
        failures += run_pool(work, [{"kind": "map", "work": str(work), "family": f.name, "n": n}
                                    for f in W.FAMILIES for n in MAP_SIZES], args.workers)  # fmt: skip
    if args.stage in ("all", "arms"):
        order = [a for a in arm_names if a in MAIN_ARMS] + [a for a in arm_names if a not in MAIN_ARMS]
        specs = [{"kind": "arm", "work": str(work), "seed": s, "arm": a, "steps": steps} for a in order for s in seeds]
        failures += run_pool(work, specs, args.workers)
    summary = report(work, Path(args.out) if not args.quick else work / "report")
    print((Path(args.out) if not args.quick else work / "report").joinpath("tables.md").read_text())
    if failures:
        print(f"{len(failures)} jobs failed:", *failures, sep="\n  ")
    line = {
        "seeds": len(seeds), "failed_jobs": len(failures), "wall_s": round(time.time() - t0, 1),
        "final_natural": {a: round(v["natural"][ROUNDS + 1], 4) for a, v in summary["arms"].items()},
        "final_macro": {a: round(v["macro"][ROUNDS + 1], 4) for a, v in summary["arms"].items()},
        "diff_vs_lion_natural": {a: round(d["natural"]["mean"], 4) for a, d in summary["diff_vs_lion"].items()},
        "diff_vs_plain_natural": {a: round(d["natural"]["mean"], 4) for a, d in summary["diff_vs_plain"].items()},
        "usd": {a: round(v["usd"], 4) for a, v in summary["arms"].items()},
        "overlap": sum(v["overlap"] for v in summary["arms"].values()),
    }  # fmt: skip
    print(json.dumps(line))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
