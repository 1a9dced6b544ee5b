"""Lion vs random at equal teacher calls, in the offline oracle world (issue 5, item 3).

    python bench/lion_vs_random.py [--config configs/smoke.yaml] [--seeds 0 1 2] [--rounds 2] [--heldout 20]
                                   [--set student.max_steps=100 ...] [--workdir runs/bench_lion_vs_random] [--json]

For every seed, two arms start from the same seed pool and the same round-1 student:

- **lion**: the real loop (`lion.run.lion_loop`) with the config: the oracle referee splits the Cache Pool into
  hard and easy, the oracle generator writes new instructions from hard and easy seeds, the next Train Pool is
  built from them (`pools.train_pool`), and the student continues training.
- **random**: after round 1, each round adds exactly as many new instructions as the lion arm accepted in the
  same round, drawn uniformly over task families (difficulty uniform), answered by the same oracle teacher and
  trained with the same settings. Both arms therefore pay the teacher for the same number of answers; the lion arm
  also pays the referee and the generator, which the baseline does not need.

Reported per round (round R+1 is the final imitation on the last Train Pool):
- held-out exact-match accuracy, per family and overall, of each arm's student (a fresh held-out set per seed,
  disjoint from every pool);
- hard-mining precision: the fraction of the instructions the referee called hard that the student really got
  wrong (and the recall: the fraction of the student's wrong answers that were called hard), for the referee of
  the run, and re-judged on the same answers by a clean referee, a noisy and position-biased referee judging both
  orders, and the same referee judging one order only (teacher first);
- mean and spread (sample std, min, max) over the seeds.
The figures are printed whatever they show. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lion.config import LionConfig, load_config  # noqa: E402
from lion.layout import RoundPaths, RunLayout  # noqa: E402
from lion.records import Instruction, read_jsonl, read_pool, write_jsonl  # noqa: E402
from lion.sim import tasks as W  # noqa: E402

# referee variants for the hard-mining precision re-judging: (name, options, both_orders)
VARIANTS: list[tuple[str, dict[str, float], bool]] = [
    ("clean", {"referee_noise": 0.0, "position_bias": 0.0}, True),
    ("noisy_biased_both_orders", {"referee_noise": 1.5, "position_bias": 1.5}, True),
    ("noisy_biased_one_order", {"referee_noise": 1.5, "position_bias": 1.5}, False),
]


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/lion_vs_random.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "smoke.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for both arms, e.g. --set student.max_steps=100")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seed-pool", type=int, default=1000, help="seed instructions per seed (smoke: 1000)")
    p.add_argument("--heldout", type=int, default=20, help="held-out instances per family")
    p.add_argument("--workdir", default=str(ROOT / "runs" / "bench_lion_vs_random"))
    p.add_argument("--json", action="store_true", help="print only the final JSON line")
    return p


# --------------------------------------------------------------------------------------------- helpers


def say(args: argparse.Namespace, *msg: Any) -> None:
    if not args.json:
        print(*msg, flush=True)


def heldout(n_per_family: int, seed: int, exclude: set[str]) -> list[dict[str, Any]]:
    rows = W.heldout_set(n_per_family + 5, 10_000 + seed)
    out, per = [], {f: 0 for f in W.BY_NAME}
    for r in rows:
        fam = r["meta"]["family"]
        if r["instruction"] not in exclude and per[fam] < n_per_family:
            out.append(r)
            per[fam] += 1
    return out


def evaluate(cfg: LionConfig, student: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    from lion.student.data import format_prompt
    from lion.student.infer import generate

    prompts = [format_prompt(r["instruction"], fmt=cfg.student.prompt_format) for r in rows]
    outs = generate(student, prompts, cfg.student.infer, progress=False)
    per: dict[str, list[int]] = {}
    for r, o in zip(rows, outs):
        per.setdefault(r["meta"]["family"], []).append(1 if W.grade(r["instruction"], o or "") else 0)
    acc = {f: sum(v) / len(v) for f, v in per.items()}
    return {"overall": sum(sum(v) for v in per.values()) / sum(len(v) for v in per.values()), "family": acc}


def random_instructions(n: int, seed: int, r: int, taken: set[str]) -> list[Instruction]:
    rng = random.Random(f"random-arm:{seed}:{r}")
    fams = list(W.BY_NAME)
    out: list[Instruction] = []
    while len(out) < n:
        t = W.sample_task(rng, rng.choice(fams))
        if t.instruction in taken:
            continue
        taken.add(t.instruction)
        out.append(Instruction(t.instruction, round=r - 1, kind="random", meta=t.meta))
    return out


def teacher_answer(oracle: Any, instruction: str) -> str:
    from lion.prompts import load_template, teacher_request

    body = {"model": "oracle", "messages": [
        {"role": "system", "content": load_template("teacher_system").render()},
        {"role": "user", "content": load_template("teacher").render(request=teacher_request(instruction))},
    ]}
    return oracle.respond(body)


def mining(split: list[dict[str, Any]], s_ans: dict[str, str]) -> dict[str, Any]:
    """Precision and recall of the hard label against the truth (student wrong)."""
    judged = [row for row in split if row["label"] in ("hard", "easy") and W.parse_task(row["instruction"])]
    wrong = {row["id"] for row in judged if not W.grade(row["instruction"], s_ans.get(row["id"], ""))}
    hard = {row["id"] for row in judged if row["label"] == "hard"}
    return {
        "precision": len(hard & wrong) / len(hard) if hard else None,
        "recall": len(hard & wrong) / len(wrong) if wrong else None,
        "hard": len(hard), "wrong": len(wrong), "judged": len(judged),
    }


def rejudge(cfg: LionConfig, rd: RoundPaths, variant: tuple[str, dict[str, float], bool]) -> dict[str, Any]:
    """Judge round rd's (teacher, student) answers again with another oracle referee; hard-mining figures."""
    from lion.discrimination import split_row
    from lion.prompts import load_template
    from lion.referee import judge_pairs
    from lion.sim.oracle import OracleResponder
    from lion.sim.server import SimServer
    from lion.teachers.gateway import Gateway

    name, opts, both = variant
    pool = read_pool(rd.cache_pool)
    s_ans = {row["id"]: row["answer"] for row in read_jsonl(rd.student_answers)}
    oracle = OracleResponder(seed=cfg.seed, **opts)
    items = [(i.id, i.instruction, teacher_answer(oracle, i.instruction), s_ans.get(i.id, "")) for i in pool]
    with SimServer(oracle) as server:
        llm = load_config(None, [
            "student.model=tiny", "pools.train_seed=x", f"llm.default.base_url={server.base_url}",
            "llm.default.model=oracle", "llm.default.rpm=1000000", "llm.default.tpm=1000000000",
            "llm.default.max_in_flight=32", "llm.default.max_tokens=128",
        ]).llm
        with Gateway(llm, None, progress=False) as gw:
            judged = judge_pairs(gw, "referee", "bench", items, load_template("referee"), attempts=2,
                                 both_orders=both, desc=name)
    by_id = {j.id: j for j in judged}
    split = [split_row(i, by_id[i.id], cfg.discrimination.tau).to_json() for i in pool]
    flips = [j.flipped for j in judged if j.flipped is not None]
    out = mining(split, s_ans)
    out["swap_flip_rate"] = sum(flips) / len(flips) if flips else None
    return out


# --------------------------------------------------------------------------------------------- one seed


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    from lion.run import lion_loop
    from lion.sim.oracle import OracleResponder
    from lion.student.train import train_student

    work = Path(args.workdir) / f"seed_{seed}"
    work.mkdir(parents=True, exist_ok=True)
    seed_file = work / "seed_pool.jsonl"
    write_jsonl(seed_file, W.seed_pool(args.seed_pool, seed))
    over = [*args.overrides, f"run_dir={work / 'lion'}", f"seed={seed}", f"rounds={args.rounds}",
            "final_imitation=true", f"pools.train_seed={seed_file}", "pools.limit=null",
            f"sim.options.seed={seed}"]
    cfg = load_config(args.config, over)
    t0 = time.time()
    lion_loop(cfg, progress=False, echo=not args.json)
    t_lion = time.time() - t0
    run = RunLayout(cfg.run_dir)
    rounds = args.rounds + 1  # + the final imitation

    taken = {r["instruction"] for r in read_jsonl(seed_file)}
    for r in range(2, rounds + 1):
        taken |= {i.instruction for i in read_pool(run.round(r).cache_pool)}
    rows = heldout(args.heldout, seed, taken)

    # the random arm: same round-1 student; then as many uniform new instructions as lion accepted
    oracle = OracleResponder(seed=seed)
    t0 = time.time()
    prev = run.round(1).student
    train_pool = read_pool(run.round(1).train_pool)
    n_new: dict[int, int] = {}
    for r in range(2, rounds + 1):
        n_new[r] = len(read_jsonl(run.round(r - 1).generated))
        new = random_instructions(n_new[r], seed, r, taken)
        train_pool = train_pool + new if cfg.pools.train_pool == "accumulate" else new
        examples = [{"instruction": i.instruction, "input": "", "output": teacher_answer(oracle, i.instruction)}
                    for i in train_pool]
        out = RunLayout(work / "random").round(r).student
        if not (out / "lion_student.json").exists():
            train_student(cfg.student, examples, prev, out, seed=cfg.seed + r)
        prev = out
    t_random = time.time() - t0

    acc: dict[str, dict[int, Any]] = {"lion": {}, "random": {}}
    for r in range(1, rounds + 1):
        acc["lion"][r] = evaluate(cfg, run.round(r).student, rows)
        acc["random"][r] = acc["lion"][1] if r == 1 else evaluate(cfg, RunLayout(work / "random").round(r).student, rows)

    mine: dict[int, dict[str, Any]] = {}
    for r in range(1, args.rounds + 1):
        rd = run.round(r)
        split = read_jsonl(rd.split)
        s_ans = {row["id"]: row["answer"] for row in read_jsonl(rd.student_answers)}
        mine[r] = {"run_referee": mining(split, s_ans)}
        flips = [row["flipped"] for row in split if row.get("flipped") is not None]
        mine[r]["run_referee"]["swap_flip_rate"] = sum(flips) / len(flips) if flips else None
        for v in VARIANTS:
            mine[r][v[0]] = rejudge(cfg, rd, v)
    teacher_calls = {
        "lion": len(read_pool(run.round(rounds).cache_pool)),
        "random": args.seed_pool + sum(n_new.values()),
    }
    return {"seed": seed, "accuracy": acc, "mining": mine, "new_per_round": n_new, "teacher_answers": teacher_calls,
            "heldout_n": len(rows), "seconds": {"lion": round(t_lion, 1), "random": round(t_random, 1)}}


# --------------------------------------------------------------------------------------------- report


def spread(xs: list[float | None]) -> dict[str, Any]:
    v = [x for x in xs if x is not None]
    if not v:
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
    return {"mean": round(statistics.fmean(v), 4), "sd": round(statistics.stdev(v), 4) if len(v) > 1 else 0.0,
            "min": round(min(v), 4), "max": round(max(v), 4), "n": len(v)}


def fmt(s: dict[str, Any]) -> str:
    return "-" if s["mean"] is None else f"{s['mean']:.3f}±{s['sd']:.3f}"


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    results = []
    for seed in args.seeds:
        say(args, f"== seed {seed}")
        results.append(run_seed(args, seed))
        res = results[-1]
        say(args, f"seed {seed}: " + json.dumps({
            "overall": {arm: {r: round(res["accuracy"][arm][r]["overall"], 3) for r in res["accuracy"][arm]}
                        for arm in ("lion", "random")},
            "precision": {r: {k: v["precision"] for k, v in res["mining"][r].items()} for r in res["mining"]},
            "new_per_round": res["new_per_round"], "seconds": res["seconds"]}))
    rounds = args.rounds + 1
    summary: dict[str, Any] = {"seeds": args.seeds, "rounds": args.rounds, "accuracy": {}, "mining": {}}
    say(args, "\nheld-out accuracy (mean±sd over seeds); round", rounds, "= final imitation")
    say(args, f"{'round':>5} {'arm':>7} {'overall':>12}  " + " ".join(f"{f[:9]:>9}" for f in W.BY_NAME))
    for r in range(1, rounds + 1):
        for arm in ("lion", "random"):
            overall = spread([res["accuracy"][arm][r]["overall"] for res in results])
            fams = {f: spread([res["accuracy"][arm][r]["family"].get(f) for res in results]) for f in W.BY_NAME}
            summary["accuracy"].setdefault(str(r), {})[arm] = {"overall": overall,
                                                                "family": {f: s["mean"] for f, s in fams.items()}}
            say(args, f"{r:>5} {arm:>7} {fmt(overall):>12}  " + " ".join(f"{fams[f]['mean']:>9.2f}" for f in W.BY_NAME))
        diff = spread([res["accuracy"]["lion"][r]["overall"] - res["accuracy"]["random"][r]["overall"] for res in results])
        summary["accuracy"][str(r)]["lion_minus_random"] = diff
        say(args, f"{r:>5} {'diff':>7} {fmt(diff):>12}")
    say(args, "\nhard-mining precision / recall (mean±sd over seeds)")
    names = ["run_referee"] + [v[0] for v in VARIANTS]
    for r in range(1, args.rounds + 1):
        for name in names:
            p = spread([res["mining"][r][name]["precision"] for res in results])
            rc = spread([res["mining"][r][name]["recall"] for res in results])
            flip = spread([res["mining"][r][name].get("swap_flip_rate") for res in results])
            summary["mining"].setdefault(str(r), {})[name] = {"precision": p, "recall": rc, "swap_flip_rate": flip}
            say(args, f"round {r} {name:>26}: precision {fmt(p)}  recall {fmt(rc)}  flip {fmt(flip)}")
    summary["teacher_answers"] = [res["teacher_answers"] for res in results]
    summary["new_per_round"] = [res["new_per_round"] for res in results]
    summary["seconds"] = [res["seconds"] for res in results]
    summary["per_seed"] = [{"seed": res["seed"], "overall": {arm: {r: res["accuracy"][arm][r]["overall"]
                                                                   for r in res["accuracy"][arm]}
                                                             for arm in ("lion", "random")}} for res in results]
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    from lion.errors import cli_main

    cli_main(main)
