"""Does the loop pay? Every arm against plain distillation and the paper's loop, paired by seed, in several worlds.

    python bench/efficacy.py                                   # the study: 3 worlds x 10 seeds x all arms (hours)
    python bench/efficacy.py --world configs/worlds/rare_learnable.yaml     # one world (repeatable)
    python bench/efficacy.py --stage report                    # tables, plots and the JSON line from what finished
        [--seeds 10] [--workers 2] [--workdir runs/efficacy23] [--arms lion plain ...] [--steps 150] [--smoke]

The design is written down, before any result, in docs/efficacy.md ("Worlds, preference and progress"); this file
carries it out. Per world and seed s: a seed file of 1000 instructions from the world's sampler plus 1500 it
keeps unused (pools.limit 1000: what `pools.fresh_share` and the plain arm draw from), 500 further instructions
only in the Cache Pool (never trained on: the progress selector's probe set comes from them), two held-out sets
drawn apart from all of those (600 from the seed distribution: the primary metric; 50 per family: the macro
average), and one shared round-1 student (the *trunk*: imitation on the 1000 seeds). Every arm starts from a copy
of the trunk (pools, student, answers, call cache; Cache Pool = the 1000 + the 500), adds 600 new instructions per
round for two rounds (Train Pools accumulate, the student continues), and trains `--steps` steps per round; the
equal-USD arms add as many as the USD `lion` spent on that seed buys.

Every job (trunk, arm) runs in its own process and writes its result file last, so a stopped study continues
where it stopped (`--stage arms` again). Each result records the job's wall and CPU seconds. The held-out overlap
with every pool of every arm is counted and must be 0. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
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
from lion.records import Instruction, read_jsonl, read_pool, write_json, write_jsonl, write_pool  # noqa: E402
from lion.sim.tasks import TaskWorld, load_world  # noqa: E402

WORLDS = [ROOT / "configs" / "worlds" / f"{n}.yaml" for n in ("default", "rare_learnable", "noisy_referee")]
SEED_POOL = 1000
UNUSED = 1500  # more seed-file rows, past pools.limit: fresh_share and the plain arm's kind of data
UNSEEN_EXTRA = 500  # Cache Pool only: never trained on (the progress selector's probe set is drawn from them)
NATURAL_HELDOUT = 600  # primary metric: questions drawn like the seeds
PER_FAMILY_HELDOUT = 50  # secondary metric: family macro-average
NEW_PER_ROUND = 600  # 400 hard + 200 easy for the generator arms
STUDENT = {"vocab": "char", "hidden": 96, "layers": 3, "heads": 4, "max_position_embeddings": 256}
# training recipe of every job: packed rows of 160 tokens, 18 rows a step (about 62 examples, the earlier 64)
RECIPE = ["student.packing=true", "student.pack_length=160", "student.per_device_batch_size=18",
          "student.grad_accum=1", "student.save_minutes=0"]
PREFERENCE = ["imitation.preference_epochs=1", "imitation.preference_beta=0.1"]  # lr: student.lr / 10 (the default)

# arm -> (config overrides, how new instructions are chosen: "loop" | "plain" | "uniform", what it tests)
ARMS: dict[str, tuple[list[str], str, str]] = {
    "lion": ([], "loop", "the paper: referee in both orders, tau 1, generator on hard and easy seeds"),
    "plain": ([], "plain", "more instructions from the world's sampler: plain distillation with more data"),
    "student_loss": (["discrimination.selector=student_loss"], "loop",
                     "no referee: the half of the Cache Pool with the student's highest loss is hard"),
    "progress": (["discrimination.selector=progress"], "loop",
                 "no referee: requests shared among families by gain per example on a probe set"),
    "dpo": (["imitation.preference=dpo", *PREFERENCE], "loop",
            "lion + a DPO stage on the pairs the referee judged hard in both orders"),
    "spin": (["discrimination.selector=student_loss", "imitation.preference=spin", *PREFERENCE], "loop",
             "student_loss + a SPIN stage on every differing pair (no referee)"),
    "progress_fresh": (["discrimination.selector=progress", "pools.fresh_share=0.5"], "loop",
                       "progress with half of each round's new data drawn from unused seeds"),
    "plain_usd": ([], "plain", "plain given the USD lion spent on the same seed (more teacher answers)"),
    "student_loss_usd": (["discrimination.selector=student_loss"], "loop",
                         "student_loss given the USD lion spent on the same seed (more new instructions)"),
    # arms of the first study (issue 13), kept runnable
    "self_instruct": (["discrimination.selector=none"], "loop", "the generator on seeds drawn uniformly"),
    "uniform": ([], "uniform", "families drawn uniformly (a reference that knows the metric)"),
    "learnable": (["discrimination.selector=learnable"], "loop", "referee minus items stuck for 2 rounds"),
}
STUDY_ARMS = ("lion", "plain", "student_loss", "progress", "dpo", "spin", "progress_fresh", "plain_usd",
              "student_loss_usd")
USD_ARMS = {"plain_usd": "plain", "student_loss_usd": "student_loss"}  # arm -> the arm whose spend it scales
ROUNDS = 2  # adversarial rounds; + the final imitation = 3 students per arm (round 1's is the shared trunk)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/efficacy.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", choices=("all", "arms", "report"), default="all")
    p.add_argument("--world", action="append", type=Path, help="a world file (repeatable); default: the three "
                                                               "shipped worlds (configs/worlds)")
    p.add_argument("--seeds", type=int, default=10, help="seeds 0 .. N-1 (the jobs run, and the seeds the report reads)")
    p.add_argument("--workers", type=int, default=2, help="jobs run in parallel (one CPU thread each)")
    p.add_argument("--arms", nargs="+", default=list(STUDY_ARMS), choices=list(ARMS))
    p.add_argument("--steps", type=int, default=150, help="training steps per round of every arm")
    p.add_argument("--trunk-steps", type=int, default=400, help="training steps of the shared round-1 student")
    p.add_argument("--workdir", default=str(ROOT / "runs" / "efficacy23"))
    p.add_argument("--out", default=str(ROOT / "docs" / "efficacy" / "worlds"), help="the report's plots and tables")
    p.add_argument("--smoke", action="store_true", help="a CI-sized trial (1 seed, small pools, 8 steps): checks "
                                                        "that the bench runs end to end, not a result")
    p.add_argument("--job", help=argparse.SUPPRESS)  # internal: run one job (a JSON spec) in this process
    return p


# --------------------------------------------------------------------------------------------- the world


def sizes(smoke: bool) -> dict[str, int]:
    if smoke:
        return {"seed": 60, "unused": 40, "unseen": 40, "natural": 30, "family": 3, "new": 12}
    return {"seed": SEED_POOL, "unused": UNUSED, "unseen": UNSEEN_EXTRA, "natural": NATURAL_HELDOUT,
            "family": PER_FAMILY_HELDOUT, "new": NEW_PER_ROUND}


def seed_dir(work: Path, seed: int) -> Path:
    return work / f"seed_{seed:02d}"


def world_files(work: Path, seed: int, world: TaskWorld, n: dict[str, int]) -> dict[str, Path]:
    """The seed's seed file, Cache Pool seeds and held-out sets (written once, deterministic)."""
    d = seed_dir(work, seed)
    files = {k: d / f"{k}.jsonl" for k in ("seeds", "cache_seeds", "heldout_natural", "heldout_family", "heldout")}
    if all(f.exists() for f in files.values()):
        return files
    seeds = world.seed_pool(n["seed"] + n["unused"], seed)  # the first n["seed"] are the Train Pool (pools.limit)
    taken = {str(r["instruction"]) for r in seeds}

    def draw(k: int, label: str) -> list[dict[str, Any]]:
        rng = random.Random(f"efficacy:{label}:{seed}")
        out: list[dict[str, Any]] = []
        while len(out) < k:
            t = world.sample_task(rng)
            if t.instruction not in taken:
                taken.add(t.instruction)
                out.append({"instruction": t.instruction, "answer": t.answer, "meta": t.meta})
        return out

    natural = draw(n["natural"], "natural-heldout")
    family = world.heldout_set(n["family"], 10_000 + seed, exclude=taken)
    taken |= {str(r["instruction"]) for r in family}
    unseen = [{"instruction": r["instruction"], "meta": r["meta"]} for r in draw(n["unseen"], "unseen")]
    write_jsonl(files["seeds"], seeds)
    write_jsonl(files["cache_seeds"], [*seeds[: n["seed"]], *unseen])
    write_jsonl(files["heldout_natural"], natural)
    write_jsonl(files["heldout_family"], family)
    # what generation must never produce (generation.decontaminate): both held-out sets
    write_jsonl(files["heldout"], [{"instruction": r["instruction"]} for r in [*natural, *family]])
    return files


def config(spec: dict[str, Any], run_dir: Path, steps: int, extra: list[str]) -> LionConfig:
    n = sizes(spec.get("smoke", False))
    world = load_world(spec["world"])
    files = world_files(Path(spec["work"]), spec["seed"], world, n)
    s = spec["seed"]
    over = [
        f"run_dir={run_dir}", f"seed={s}", f"rounds={ROUNDS}", "final_imitation=true", f"sim.world={spec['world']}",
        f"sim.options={{seed: {s}}}", f"pools.train_seed={files['seeds']}", f"pools.limit={n['seed']}",
        f"student.tiny={json.dumps(STUDENT)}", f"student.max_steps={steps}", "student.cpu_threads=1",
        "student.infer.cpu_threads=1", "eval.every_round=false", f"generation.decontaminate=[{files['heldout']}]",
        "llm.budget_usd=null", "generation.max_attempts_factor=6",
        f"generation.n_hard={2 * n['new'] // 3}", f"generation.n_easy={n['new'] - 2 * n['new'] // 3}",
        *RECIPE, *extra,
    ]  # fmt: skip
    if spec.get("smoke"):
        over += ["discrimination.probe_size=20"]
    return load_config(ROOT / "configs" / "smoke.yaml", over)


# --------------------------------------------------------------------------------------------- evaluation


def accuracy(cfg: LionConfig, world: TaskWorld, student: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Exact accuracy of `student` on held-out rows (instruction + answer): overall and per family."""
    from lion.student.data import format_prompt
    from lion.student.infer import generate
    from lion.world import family_accuracy

    prompts = [format_prompt(str(r["instruction"]), fmt=cfg.student.prompt_format) for r in rows]
    outs = generate(student, prompts, cfg.student.infer, progress=False)
    return family_accuracy(world, ((str(r["instruction"]), o or "") for r, o in zip(rows, outs, strict=True)))


def evaluate_student(cfg: LionConfig, spec: dict[str, Any], student: Path) -> dict[str, Any]:
    """Both held-out metrics of one student, cached beside it (a student is evaluated once)."""
    cache = student.with_name(student.name + ".efficacy.json")
    if cache.exists():
        return json.loads(cache.read_text())
    world = load_world(spec["world"])
    files = world_files(Path(spec["work"]), spec["seed"], world, sizes(spec.get("smoke", False)))
    nat = accuracy(cfg, world, student, read_jsonl(files["heldout_natural"]))
    fam = accuracy(cfg, world, student, read_jsonl(files["heldout_family"]))
    macro = statistics.mean(fam["accuracy"].values()) if fam["accuracy"] else None
    out = {"natural": nat["overall"], "macro": macro, "family": fam["accuracy"]}
    write_json(cache, out)
    return out


def overlap(run: RunLayout, files: dict[str, Path]) -> int:
    """Held-out questions (either set) found in any Train or Cache Pool of the run: must be 0."""
    held = {" ".join(str(r["instruction"]).split()) for f in ("heldout_natural", "heldout_family") for r in
            read_jsonl(files[f])}  # fmt: skip
    seen = set()
    for rp in run.rounds():
        for pool in (rp.train_pool, rp.cache_pool):
            if pool.exists():
                seen |= {" ".join(i.instruction.split()) for i in read_pool(pool)} & held
    return len(seen)


# --------------------------------------------------------------------------------------------- jobs


def job_trunk(spec: dict[str, Any]) -> dict[str, Any]:
    """Round 1's imitation on the seed pool: the student every arm of this world and seed starts from."""
    from lion.context import RunContext
    from lion.imitation import imitation
    from lion.pools import prepare_round

    run_dir = seed_dir(Path(spec["work"]), spec["seed"]) / "trunk"
    cfg = config(spec, run_dir, spec["trunk_steps"], [])
    with RunContext(cfg, progress=False) as ctx:
        prepare_round(ctx, 1)
        imitation(ctx, 1)
    usage = json.loads(RunLayout(run_dir).usage.read_text())["total"]
    return {"eval": evaluate_student(cfg, spec, RunLayout(run_dir).round(1).student), "usd": usage.get("usd")}


def sample_new(cfg: LionConfig, world: TaskWorld, files: dict[str, Path], seed: int, r: int, pool: list[Instruction],
               how: str, n: int) -> list[Instruction]:
    """plain / uniform arms: the round's new instructions straight from the world's sampler."""
    taken = {i.instruction for i in pool} | {str(x["instruction"]) for x in read_jsonl(files["heldout"])}
    taken |= {str(x["instruction"]) for x in read_jsonl(files["cache_seeds"])}
    rng = random.Random(f"efficacy:{how}:{seed}:{r}")
    families = [f.name for f in world.families]
    out: list[Instruction] = []
    while len(out) < n:
        t = world.sample_task(rng, rng.choice(families) if how == "uniform" else None)
        if t.instruction not in taken:
            taken.add(t.instruction)
            out.append(Instruction(t.instruction, round=r, kind=how, meta=dict(t.meta)))
    return out


def run_sampler_arm(cfg: LionConfig, spec: dict[str, Any], how: str, n: int) -> None:
    """The loop with discrimination and generation replaced by the world's sampler (no referee, no generator)."""
    from lion.context import RunContext
    from lion.imitation import imitation
    from lion.pools import prepare_round

    world = load_world(spec["world"])
    files = world_files(Path(spec["work"]), spec["seed"], world, sizes(spec.get("smoke", False)))
    with RunContext(cfg, progress=False) as ctx:
        for r in range(1, ROUNDS + 1):
            prepare_round(ctx, r)
            imitation(ctx, r)
            rp = ctx.run.round(r)
            if not ctx.run.is_done(r, "generation"):
                new = sample_new(cfg, world, files, spec["seed"], r, read_pool(rp.cache_pool), how, n)
                write_jsonl(rp.generated, (i.to_json() for i in new))
                write_json(rp.phase_metrics("generation"), {"source": how, "accepted": {how: len(new)}})
                ctx.run.mark_done(r, "discrimination", {"skipped": f"arm {how}: no discrimination"})
                ctx.run.mark_done(r, "generation")
        prepare_round(ctx, ROUNDS + 1)
        imitation(ctx, ROUNDS + 1)


def branch_from_trunk(spec: dict[str, Any], arm_dir: Path, cfg: LionConfig) -> None:
    """A copy of the trunk (round 1's pools, student, answers and call cache) under the arm's own config; the Cache
    Pool also holds the instructions never trained on."""
    from lion.rundir import RunDir, fingerprint

    if RunDir(arm_dir).state.exists():
        return
    work = Path(spec["work"])
    tmp = arm_dir.with_name(arm_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(seed_dir(work, spec["seed"]) / "trunk", tmp)
    run = RunDir(tmp)
    run.state.unlink()
    files = world_files(work, spec["seed"], load_world(spec["world"]), sizes(spec.get("smoke", False)))
    write_pool(run.round(1).cache_pool, (Instruction.from_json(r) for r in read_jsonl(files["cache_seeds"])))
    write_json(run.state, {"version": 1, "fingerprint": fingerprint(cfg), "rounds_completed": 0})
    tmp.rename(arm_dir)


def equal_usd_size(spec: dict[str, Any], arm: str) -> int:
    """New instructions per round for an equal-USD arm: its base arm's, scaled so that the run spends what `lion`
    spent on the same world and seed (beyond the shared trunk)."""
    work, seed, n = Path(spec["work"]), spec["seed"], sizes(spec.get("smoke", False))["new"]
    res = {a: result_path(work, {"kind": "arm", "arm": a, "seed": seed}) for a in ("lion", USD_ARMS[arm])}
    trunk = result_path(work, {"kind": "trunk", "seed": seed})
    missing = [str(p) for p in [*res.values(), trunk] if not p.exists()]
    if missing:
        raise SystemExit(f"{arm} needs the results of lion and {USD_ARMS[arm]} for seed {seed} first: {missing}")
    base = json.loads(trunk.read_text())["usd"] or 0.0
    lion_usd = json.loads(res["lion"].read_text())["usd"] - base
    own_usd = json.loads(res[USD_ARMS[arm]].read_text())["usd"] - base
    return max(n, round(n * lion_usd / own_usd)) if own_usd > 0 else n


def job_arm(spec: dict[str, Any]) -> dict[str, Any]:
    from lion.run import lion_loop

    arm, seed, work = spec["arm"], spec["seed"], Path(spec["work"])
    extra, how, _ = ARMS[arm]
    n = equal_usd_size(spec, arm) if arm in USD_ARMS else sizes(spec.get("smoke", False))["new"]
    if how == "loop" and arm in USD_ARMS:
        extra = [*extra, f"generation.n_hard={2 * n // 3}", f"generation.n_easy={n - 2 * n // 3}"]
    arm_dir = seed_dir(work, seed) / "arms" / arm
    cfg = config(spec, arm_dir, spec["steps"], extra)
    t0 = time.time()
    branch_from_trunk(spec, arm_dir, cfg)
    if how == "loop":
        lion_loop(cfg, progress=False, echo=False)
    else:
        run_sampler_arm(cfg, spec, how, n)
    run = RunLayout(arm_dir)
    world = load_world(spec["world"])
    files = world_files(work, seed, world, sizes(spec.get("smoke", False)))
    leaks = overlap(run, files)
    if leaks:
        raise SystemExit(f"{arm_dir}: {leaks} held-out questions reached a pool; the study would be invalid")
    evals = {r: evaluate_student(cfg, spec, run.round(r).student) for r in range(1, ROUNDS + 2)}
    usage = json.loads(run.usage.read_text())["total"] if run.usage.exists() else {}
    new_families: dict[str, int] = {}
    for r in range(1, ROUNDS + 1):
        for row in read_jsonl(run.round(r).generated):
            fam = world.family(row["instruction"]) or "unknown"
            new_families[fam] = new_families.get(fam, 0) + 1
    teacher_answers = len({row["id"] for row in read_jsonl(run.teacher_answers)})
    phase = {p: [json.loads(run.round(r).phase_metrics(p).read_text()) if run.round(r).phase_metrics(p).exists()
                 else {} for r in range(1, ROUNDS + 1)] for p in ("discrimination", "preference")}  # fmt: skip
    return {
        "arm": arm, "seed": seed, "world": world.name, "eval": evals, "usd": usage.get("usd"),
        "calls": usage.get("calls"), "tokens": (usage.get("tokens_in") or 0) + (usage.get("tokens_out") or 0),
        "teacher_answers": teacher_answers, "new_per_round": n, "new_families": new_families, "overlap": leaks,
        "seconds": round(time.time() - t0, 1), "hard_ratio": [d.get("hard_ratio") for d in phase["discrimination"]],
        "preference": [{k: p.get(k) for k in ("pairs", "left_out")} | {k: (p.get("train") or {}).get(k) for k in
                       ("margin_first", "margin_last", "ranked_right_last", "steps")} for p in phase["preference"]],
    }  # fmt: skip


def run_job(spec: dict[str, Any]) -> dict[str, Any]:
    return job_trunk(spec) if spec["kind"] == "trunk" else job_arm(spec)


# --------------------------------------------------------------------------------------------- scheduling


def result_path(work: Path, spec: dict[str, Any]) -> Path:
    name = f"trunk_s{spec['seed']}" if spec["kind"] == "trunk" else f"arm_{spec['arm']}_s{spec['seed']}"
    return work / "results" / f"{name}.json"


def run_pool(specs: list[dict[str, Any]], workers: int, script: Path = Path(__file__)) -> list[str]:
    """Run the specs not done yet, `workers` at a time, each in its own process (`script --job SPEC`); return the
    failures. A job's result gets its wall and CPU seconds (user + system of its process)."""
    todo = [s for s in specs if not result_path(Path(s["work"]), s).exists()]
    failures: list[str] = []
    if not todo:
        return failures
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t0, done = time.time(), 0

    def one(spec: dict[str, Any]) -> tuple[dict[str, Any], int, str]:
        out = result_path(Path(spec["work"]), spec)
        log = out.with_suffix(".log")
        log.parent.mkdir(parents=True, exist_ok=True)
        start = time.time()
        with open(log, "w") as f:
            p = subprocess.Popen([sys.executable, str(script), "--job", json.dumps(spec)], env=env, stdout=f,
                                 stderr=subprocess.STDOUT)  # fmt: skip
            _, status, usage = os.wait4(p.pid, 0)  # its own CPU time, whatever else runs
            rc = p.returncode = os.waitstatus_to_exitcode(status)
        if rc == 0 and out.exists():
            row = json.loads(out.read_text())
            row["job"] = {"wall_s": round(time.time() - start, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1)}
            write_json(out, row)
        return spec, rc, str(log)

    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        for spec, rc, log in ex.map(one, todo):
            done += 1
            left = (time.time() - t0) / done * (len(todo) - done)
            name = f"{Path(spec['work']).name}/{result_path(Path(spec['work']), spec).stem}"
            status = "ok" if rc == 0 else f"FAILED (exit {rc}; {log})"
            print(f"[{done}/{len(todo)}] {name}: {status}  elapsed {time.time() - t0:.0f}s, ~{left:.0f}s left",
                  flush=True)  # fmt: skip
            if rc != 0:
                failures.append(f"{name}: {log}")
    return failures


# --------------------------------------------------------------------------------------------- report


def bootstrap_diff(a: list[float], b: list[float], n: int = 10_000, seed: int = 0) -> dict[str, float]:
    """Mean of the paired differences a - b and its 95% percentile bootstrap interval (resampling seeds)."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    rng = random.Random(seed)
    means = sorted(statistics.mean(rng.choices(d, k=len(d))) for _ in range(n))
    return {"mean": statistics.mean(d), "lo": means[int(0.025 * n)], "hi": means[int(0.975 * n) - 1], "n": len(d)}


def load_results(work: Path, seeds: list[int] | None = None
                 ) -> tuple[dict[str, dict[int, dict[str, Any]]], dict[int, dict[str, Any]]]:
    """(arm -> seed -> result, seed -> trunk result) of one world's work folder; only `seeds` where given."""
    arms: dict[str, dict[int, dict[str, Any]]] = {}
    trunks: dict[int, dict[str, Any]] = {}
    for f in sorted((work / "results").glob("*.json")):
        row = json.loads(f.read_text())
        seed = row["seed"] if f.name.startswith("arm_") else int(f.stem.rsplit("_s", 1)[1])
        if seeds is not None and seed not in seeds:
            continue
        if f.name.startswith("arm_"):
            arms.setdefault(row["arm"], {})[row["seed"]] = row
        elif f.name.startswith("trunk_"):
            trunks[int(f.stem.rsplit("_s", 1)[1])] = row
    return arms, trunks


def world_summary(work: Path, seeds: list[int] | None = None) -> dict[str, Any]:
    by_arm, trunks = load_results(work, seeds)
    final = str(ROUNDS + 1)
    out: dict[str, Any] = {"arms": {}, "diff_vs_lion": {}, "diff_vs_plain": {}, "usd_view": {}}
    for arm, rows in sorted(by_arm.items()):
        seeds = sorted(rows)
        out["arms"][arm] = {
            "seeds": seeds,
            "natural": {r: statistics.mean(rows[s]["eval"][str(r)]["natural"] for s in seeds) for r in range(1, ROUNDS + 2)},
            "macro": {r: statistics.mean(rows[s]["eval"][str(r)]["macro"] for s in seeds) for r in range(1, ROUNDS + 2)},
            "usd": statistics.mean(rows[s]["usd"] or 0.0 for s in seeds),
            "teacher_answers": statistics.mean(rows[s]["teacher_answers"] for s in seeds),
            "new_per_round": statistics.mean(rows[s].get("new_per_round") or 0 for s in seeds),
            "overlap": sum(rows[s]["overlap"] for s in seeds),
            "cpu_s": sum((rows[s].get("job") or {}).get("cpu_s", 0.0) for s in seeds),
            "wall_s": sum((rows[s].get("job") or {}).get("wall_s", 0.0) for s in seeds),
        }  # fmt: skip
    for ref, key in (("lion", "diff_vs_lion"), ("plain", "diff_vs_plain")):
        for arm, rows in by_arm.items():
            seeds = sorted(set(rows) & set(by_arm.get(ref, {})))
            if arm == ref or len(seeds) < 2:
                continue
            out[key][arm] = {m: bootstrap_diff([rows[s]["eval"][final][m] for s in seeds],
                                               [by_arm[ref][s]["eval"][final][m] for s in seeds])
                             for m in ("natural", "macro")}  # fmt: skip
    out["trunk"] = {"seeds": sorted(trunks), "cpu_s": sum((t.get("job") or {}).get("cpu_s", 0.0) for t in trunks.values()),
                    "wall_s": sum((t.get("job") or {}).get("wall_s", 0.0) for t in trunks.values())}  # fmt: skip
    return out


def adoption(worlds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's rule: an arm is adopted only if it beats plain at equal teacher answers with a 95% CI excluding 0
    in at least two worlds and is not significantly worse in any (primary metric)."""
    out: dict[str, Any] = {}
    arms = sorted({a for w in worlds.values() for a in w["diff_vs_plain"]} - set(USD_ARMS))
    for arm in arms:
        cis = {name: w["diff_vs_plain"].get(arm, {}).get("natural") for name, w in worlds.items()}
        wins = [n for n, d in cis.items() if d and d["lo"] > 0]
        losses = [n for n, d in cis.items() if d and d["hi"] < 0]
        measured = [n for n, d in cis.items() if d]
        out[arm] = {"beats_plain_in": wins, "worse_than_plain_in": losses, "worlds_measured": measured,
                    "adopt": len(wins) >= 2 and not losses and len(measured) == len(worlds)}
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _ci(d: dict[str, float] | None) -> str:
    return "-" if not d else f"{100 * d['mean']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}] (n={d['n']})"


def tables_md(worlds: dict[str, dict[str, Any]], timing: dict[str, Any]) -> str:
    rounds = list(range(1, ROUNDS + 2))
    lines: list[str] = []
    arms_all = [a for a in ARMS if any(a in w["arms"] for w in worlds.values())]
    lines += ["### Final student, difference to plain (natural held-out accuracy, points, paired by seed, 95% CI)", "",
              "| arm | " + " | ".join(worlds) + " |", "|---|" + "---|" * len(worlds)]
    for arm in arms_all:
        if arm != "plain":
            lines.append(f"| {arm} | " + " | ".join(_ci(w["diff_vs_plain"].get(arm, {}).get("natural"))
                                                    for w in worlds.values()) + " |")
    lines += ["", "### Final student, difference to lion (natural, points, paired by seed, 95% CI)", "",
              "| arm | " + " | ".join(worlds) + " |", "|---|" + "---|" * len(worlds)]
    for arm in arms_all:
        if arm != "lion":
            lines.append(f"| {arm} | " + " | ".join(_ci(w["diff_vs_lion"].get(arm, {}).get("natural"))
                                                    for w in worlds.values()) + " |")
    lines += ["", "### Equal money: what each arm's USD bought (final natural accuracy %, USD per run, mean over seeds)",
              "", "| arm | " + " | ".join(f"{w} acc | {w} USD" for w in worlds) + " |",
              "|---|" + "---|---|" * len(worlds)]
    for arm in ("lion", "plain", "plain_usd", "student_loss", "student_loss_usd"):
        cells = []
        for w in worlds.values():
            a = w["arms"].get(arm)
            cells.append(f"{_pct(a['natural'][ROUNDS + 1])} | {a['usd']:.3f}" if a else "- | -")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    for name, w in worlds.items():
        lines += ["", f"### World `{name}`: held-out accuracy per round (mean over seeds, %)", "",
                  "| arm | seeds | " + " | ".join(f"natural r{r}" for r in rounds) + " | " +
                  " | ".join(f"macro r{r}" for r in rounds) + " | USD | teacher answers | new per round | "
                  "held-out overlap |", "|---|---|" + "---|" * (2 * len(rounds) + 4)]  # fmt: skip
        for arm, a in w["arms"].items():
            nat = " | ".join(_pct(a["natural"][r]) for r in rounds)
            mac = " | ".join(_pct(a["macro"][r]) for r in rounds)
            lines.append(f"| {arm} | {len(a['seeds'])} | {nat} | {mac} | {a['usd']:.3f} | {a['teacher_answers']:.0f} | "
                         f"{a['new_per_round']:.0f} | {a['overlap']} |")  # fmt: skip
        lines += ["", "| arm | macro vs plain | macro vs lion |", "|---|---|---|"]
        for arm in w["arms"]:
            lines.append(f"| {arm} | {_ci(w['diff_vs_plain'].get(arm, {}).get('macro'))} | "
                         f"{_ci(w['diff_vs_lion'].get(arm, {}).get('macro'))} |")
    lines += ["", f"Compute: {timing['cpu_h']:.2f} CPU-hours in all jobs ({timing['jobs']} jobs), "
                  f"{timing['job_wall_h']:.2f} hours of job wall time on {timing['workers']} workers."]
    return "\n".join(lines) + "\n"


def plots(worlds: dict[str, dict[str, Any]], out_dir: Path) -> None:
    from lion.plots import _plt

    plt = _plt()
    rounds = list(range(1, ROUNDS + 2))
    fig, axes = plt.subplots(1, len(worlds), figsize=(5.2 * len(worlds), 4.2), squeeze=False)
    for ax, (name, w) in zip(axes[0], worlds.items()):
        for arm, a in w["arms"].items():
            ax.plot(rounds, [100 * a["natural"][r] for r in rounds], marker="o", label=arm,
                    linewidth=2.2 if arm in ("lion", "plain") else 1.2)  # fmt: skip
        ax.set_title(f"world {name}")
        ax.set_xticks(rounds)
        ax.set_xlabel("student (round; the last is the final imitation)")
        ax.set_ylabel("held-out accuracy, seed distribution (%)")
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out_dir / "accuracy_per_round.png", dpi=100)
    plt.close(fig)


def report(work_root: Path, names: list[str], out_dir: Path, workers: int,
           seeds: list[int] | None = None) -> dict[str, Any]:
    """Tables, plots and summary.json of the results found (of `seeds` only where given: a partial study's
    report on the seeds every arm has, so that its means compare like with like)."""
    worlds = {n: world_summary(work_root / n, seeds) for n in names if (work_root / n / "results").exists()}
    cpu = sum(a["cpu_s"] for w in worlds.values() for a in w["arms"].values()) + sum(
        w["trunk"]["cpu_s"] for w in worlds.values())
    wall = sum(a["wall_s"] for w in worlds.values() for a in w["arms"].values()) + sum(
        w["trunk"]["wall_s"] for w in worlds.values())
    jobs = sum(len(a["seeds"]) for w in worlds.values() for a in w["arms"].values()) + sum(
        len(w["trunk"]["seeds"]) for w in worlds.values())
    timing = {"cpu_h": cpu / 3600, "job_wall_h": wall / 3600 / max(1, workers), "jobs": jobs, "workers": workers}
    summary = {"worlds": worlds, "adoption": adoption(worlds) if worlds else {}, "timing": timing}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "summary.json", summary)
    if worlds:
        (out_dir / "tables.md").write_text(tables_md(worlds, timing))
        plots(worlds, out_dir)
    return summary


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.job:
        spec = json.loads(args.job)
        res = run_job(spec)
        write_json(result_path(Path(spec["work"]), spec), res)
        return 0
    world_files_ = [Path(w) for w in (args.world or WORLDS)]
    worlds = {load_world(w).name: w.resolve() for w in world_files_}
    root = Path(args.workdir)
    seeds = list(range(1 if args.smoke else args.seeds))
    steps, trunk_steps = (8, 8) if args.smoke else (args.steps, args.trunk_steps)
    common = {"steps": steps, "trunk_steps": trunk_steps, "smoke": args.smoke}
    failures: list[str] = []
    t0 = time.time()
    if args.stage in ("all", "arms"):
        # trunks first; then arm by arm, seed by seed, the worlds interleaved (partial results stay balanced);
        # the equal-USD arms last (they need lion's spend on the same seed)
        trunks = [{"kind": "trunk", "work": str(root / n), "world": str(f), "seed": s, **common}
                  for s in seeds for n, f in worlds.items()]
        failures += run_pool(trunks, args.workers)
        order = [a for a in args.arms if a not in USD_ARMS] + [a for a in args.arms if a in USD_ARMS]
        specs = [{"kind": "arm", "work": str(root / n), "world": str(f), "seed": s, "arm": a, **common}
                 for a in order for s in seeds for n, f in worlds.items()]
        failures += run_pool(specs, args.workers)
    out = Path(args.out) if not args.smoke else root / "report"
    summary = report(root, list(worlds), out, args.workers, seeds)
    if (out / "tables.md").exists():
        print((out / "tables.md").read_text())
    if failures:
        print(f"{len(failures)} jobs failed:", *failures, sep="\n  ")
    final = ROUNDS + 1
    line = {
        "worlds": list(summary["worlds"]), "seeds": len(seeds), "failed_jobs": len(failures),
        "wall_s": round(time.time() - t0, 1), "cpu_h": round(summary["timing"]["cpu_h"], 2),
        "final_natural": {n: {a: round(v["natural"][final], 4) for a, v in w["arms"].items()}
                          for n, w in summary["worlds"].items()},
        "diff_vs_plain_natural": {n: {a: round(d["natural"]["mean"], 4) for a, d in w["diff_vs_plain"].items()}
                                  for n, w in summary["worlds"].items()},
        "usd": {n: {a: round(v["usd"], 4) for a, v in w["arms"].items()} for n, w in summary["worlds"].items()},
        "adopted": [a for a, v in summary["adoption"].items() if v["adopt"]],
        "overlap": sum(v["overlap"] for w in summary["worlds"].values() for v in w["arms"].values()),
    }  # fmt: skip
    print(json.dumps(line))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
