"""Export a run as training data other tools read: SFT rows (Alpaca, ShareGPT, OpenAI messages) or DPO pairs.

    python -m lion.export RUN [--round R | --all] --format alpaca|sharegpt|messages|dpo [--out DIR]
                              [--push-to-hub REPO [--private]]
    lion export RUN --format messages                       # the same, through the `lion` command

SFT formats: one row per instruction with the teacher's answer (bought, or taken from the seed file with
`pools.seed_answers: teacher`) and its lineage: `id`, `round` (the round that created it; 0 = seed), `kind`
(seed | hard | easy), `parent` (the instruction it was generated from), `verdict` (hard | easy, where the referee
judged it), `gap` (teacher score minus student score), `judged_round`, `answer_source` (teacher | seed).
`--round R` exports round R's Train Pool (what round R's student was trained on) with round R's verdicts;
`--all` (the default) every instruction of every pool, with its latest verdict.

- alpaca:   {"instruction", "input", "output", lineage...}          (LLaMA-Factory, Alpaca-style trainers)
- sharegpt: {"conversations": [{"from": "human", ...}, {"from": "gpt", ...}], lineage...}
- messages: {"messages": [{"role": "user", ...}, {"role": "assistant", ...}], lineage...}  (TRL SFTTrainer)
- dpo:      {"prompt", "chosen", "rejected", "chosen_score", "rejected_score", "gap", "chosen_by", ...}
            (TRL DPOTrainer): from discrimination, chosen = the answer (teacher's or student's) the referee
            scored higher, rejected = the other; only pairs whose two orders agree (no swap flip, no tie).

Written to DIR (default RUN/export/<format>[_round_XX]/): `data.jsonl`, the same rows as a `datasets` folder
(`dataset/`, `datasets.load_from_disk`), and a dataset card `README.md` (how it was made, counts per round and
kind, the teacher/referee/generator models, the spend, the resolved config). Rows left out (no teacher
answer, no verdict, a flipped pair, ...) are counted in the card and on stdout, never dropped silently.
`--push-to-hub` uploads the dataset and its card with `datasets` / `huggingface_hub` (token from HF_TOKEN or
`huggingface-cli login`); it is the only part not exercised by the offline tests.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import LionError
from .layout import ExportPaths, RunLayout
from .records import Instruction, atomic_write_text, read_json_or_empty, read_jsonl, read_jsonl_tolerant, read_pool
from .records import write_jsonl as _write_jsonl

FORMATS = ("alpaca", "sharegpt", "messages", "dpo")


@dataclass
class Export:
    """The rows of one export and what was left out (with the reason)."""

    fmt: str
    rounds: list[int]
    rows: list[dict[str, Any]] = field(default_factory=list)
    left_out: Counter[str] = field(default_factory=Counter)


def _prompt(inst: Instruction) -> str:
    """The instruction as one user turn (its input below it), as the teacher and the referee saw it."""
    return inst.instruction + (f"\n\n{inst.input}" if inst.input else "")


class RunReader:
    """What an export needs from a run directory: config, pools, answers, verdicts."""

    def __init__(self, run_dir: str | Path) -> None:
        self.layout = RunLayout(run_dir)
        if not self.layout.root.is_dir():
            raise LionError(f"{self.layout.root}: run directory not found")
        if not self.layout.config.is_file():
            raise LionError(f"{self.layout.config}: missing; is {self.layout.root} a lion run directory?")
        from .config import load_config

        self.cfg = load_config(self.layout.config)
        from .answers import AnswerStore, teacher_identity

        self.teacher = teacher_identity(self.cfg)
        self.answers = AnswerStore(self.layout.teacher_answers, self.layout.answer_index(self.cfg.llm.cache_path),
                                   allow_network_fs=self.cfg.llm.allow_network_fs)
        self.round_nos = [rp.no for rp in self.layout.rounds() if rp.train_pool.exists()]
        if not self.round_nos:
            raise LionError(f"{self.layout.root}: no round has started yet (no round_XX/train_pool.jsonl)")

    def split(self, r: int) -> dict[str, dict[str, Any]]:
        p = self.layout.round(r).split
        return {row["id"]: row for row in read_jsonl(p)} if p.exists() else {}

    def answer(self, id: str) -> dict[str, Any] | None:
        return self.answers.get(id, self.teacher)

    def pool(self, r: int, which: str) -> list[Instruction]:
        rp = self.layout.round(r)
        p = rp.train_pool if which == "train" else rp.cache_pool
        return read_pool(p) if p.exists() else []


def _lineage(inst: Instruction, verdict: dict[str, Any] | None, judged_round: int | None,
             source: str) -> dict[str, Any]:
    judged = verdict is not None and verdict.get("label") in ("hard", "easy")
    return {
        "id": inst.id,
        "round": inst.round,
        "kind": inst.kind,
        "parent": inst.parent,
        "verdict": verdict["label"] if judged else None,  # type: ignore[index]
        "gap": verdict.get("gap") if judged else None,  # type: ignore[union-attr]
        "judged_round": judged_round if judged else None,
        "answer_source": source,
    }


def _sft_row(fmt: str, inst: Instruction, answer: str, lineage: dict[str, Any]) -> dict[str, Any]:
    if fmt == "alpaca":
        return {"instruction": inst.instruction, "input": inst.input, "output": answer, **lineage}
    if fmt == "sharegpt":
        return {"conversations": [{"from": "human", "value": _prompt(inst)}, {"from": "gpt", "value": answer}],
                **lineage}
    return {"messages": [{"role": "user", "content": _prompt(inst)}, {"role": "assistant", "content": answer}],
            **lineage}


def sft_rows(run: RunReader, fmt: str, r: int | None) -> Export:
    """Round r's Train Pool (or, r None, every instruction of every pool) with the teacher's answers."""
    ex = Export(fmt, [r] if r is not None else list(run.round_nos))
    verdicts: dict[str, tuple[int, dict[str, Any]]] = {}
    for rno in ex.rounds:  # later rounds overwrite: the latest verdict wins
        for id, row in run.split(rno).items():
            if row.get("label") in ("hard", "easy"):
                verdicts[id] = (rno, row)
    if r is not None:
        pool = run.pool(r, "train")
    else:
        seen: set[str] = set()
        pool = []
        for rno in ex.rounds:
            for inst in run.pool(rno, "train") + run.pool(rno, "cache"):
                if inst.id not in seen:
                    seen.add(inst.id)
                    pool.append(inst)
    for inst in pool:
        ans = run.answer(inst.id)
        if ans is None:
            ex.left_out["no teacher answer"] += 1
            continue
        judged_round, verdict = verdicts.get(inst.id, (None, None))
        lineage = _lineage(inst, verdict, judged_round, ans.get("source") or "teacher")
        ex.rows.append(_sft_row(fmt, inst, ans["answer"], lineage))
    return ex


def dpo_rows(run: RunReader, r: int | None) -> Export:
    """Preference pairs from discrimination: teacher vs student answer on the Cache Pool, scored by the referee."""
    ex = Export("dpo", [r] if r is not None else list(run.round_nos))
    for rno in ex.rounds:
        rp = run.layout.round(rno)
        if not rp.split.exists():
            continue
        students = ({str(a["id"]): str(a["answer"]) for a in read_jsonl_tolerant(rp.student_answers)}
                    if rp.student_answers.exists() else {})
        pool = {i.id: i for i in run.pool(rno, "cache")}
        for id, row in run.split(rno).items():
            inst = pool.get(id)
            t, s = row.get("teacher_score"), row.get("student_score")
            if row.get("label") not in ("hard", "easy") or inst is None or t is None or s is None:
                ex.left_out["not judged (excluded by the referee)"] += 1
                continue
            if row.get("flipped") is not False:
                ex.left_out["orders disagree (swap flip)" if row.get("flipped") else "judged in one order only"] += 1
                continue
            if t == s:
                ex.left_out["tie"] += 1
                continue
            teacher, student = run.answer(id), students.get(id)
            if teacher is None or student is None:
                ex.left_out["an answer is missing"] += 1
                continue
            teacher_wins = t > s
            chosen, rejected = (teacher["answer"], student) if teacher_wins else (student, teacher["answer"])
            hi, lo = (t, s) if teacher_wins else (s, t)
            ex.rows.append({
                "prompt": _prompt(inst), "chosen": chosen, "rejected": rejected,
                "chosen_score": hi, "rejected_score": lo, "gap": hi - lo,
                "chosen_by": "teacher" if teacher_wins else "student",
                "id": id, "round": rno, "kind": inst.kind, "verdict": row["label"],
            })
    return ex


def build_export(run_dir: str | Path, fmt: str, r: int | None = None) -> tuple[RunReader, Export]:
    if fmt not in FORMATS:
        raise LionError(f"--format: must be one of {', '.join(FORMATS)}, got {fmt!r}")
    run = RunReader(run_dir)
    if r is not None and r not in run.round_nos:
        raise LionError(f"--round {r}: {run.layout.round(r).train_pool} does not exist "
                        f"(rounds started: {', '.join(map(str, run.round_nos))})")
    ex = dpo_rows(run, r) if fmt == "dpo" else sft_rows(run, fmt, r)
    if not ex.rows:
        why = "; ".join(f"{n} {reason}" for reason, n in ex.left_out.items()) or "nothing to export"
        raise LionError(f"{run.layout.root}: no {fmt} rows to export ({why})")
    return run, ex


# --------------------------------------------------------------------------------------------- the card


def _md_table(head: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def dataset_card(run: RunReader, ex: Export) -> str:
    """README.md of the export: YAML front matter for the hub, then how it was made, counts, models, spend, config."""
    cfg = run.cfg
    name = run.layout.root.resolve().name
    front = {"pretty_name": f"lion {name} ({ex.fmt})", "tags": ["lion", "distillation", "synthetic"],
             "task_categories": ["text-generation"],
             "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data.jsonl"}]}]}
    sft = ex.fmt != "dpo"
    out = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {name}: {ex.fmt} export", ""]
    what = ("round " + str(ex.rounds[0]) + "'s Train Pool" if len(ex.rounds) == 1 and sft and len(run.round_nos) > 1
            else f"rounds {', '.join(map(str, ex.rounds))}")
    out += [
        "Made by lion, adversarial distillation after *Lion: Adversarial Distillation of Proprietary Large "
        "Language Models* (Jiang et al., EMNLP 2023): each round the teacher answers the Train Pool and the student is fine-tuned "
        "on the answers; the referee scores teacher and student answers on the Cache Pool in both orders; "
        "instructions where the teacher wins by at least "
        f"τ = {cfg.discrimination.tau:g} are *hard*, the rest *easy*; the generator writes new instructions like "
        "the hard ones and new easy ones, which become the next Train Pool.", "",
        f"This export: {len(ex.rows)} rows from {what} of run `{name}` "
        f"({len(run.round_nos)} round(s) started), format `{ex.fmt}`.", "",
    ]
    if sft:
        out += ["Each row is an instruction with the teacher's answer and its lineage: `round` (the round that "
                "created it, 0 = seed), `kind` (seed / hard / easy), `parent` (the id of the instruction it was "
                "generated from), `verdict` and `gap` (hard / easy and teacher minus student score, where the "
                "referee judged it, in round `judged_round`), `answer_source` (teacher = bought from the teacher, "
                "seed = the seed file's own answer).", ""]
        counts = Counter((row["round"], row["kind"]) for row in ex.rows)
        out += ["## Rows per round and kind", "",
                _md_table(["round created", "kind", "rows"], [[r, k, n] for (r, k), n in sorted(counts.items())]), ""]
        verdicts = Counter(row["verdict"] or "not judged" for row in ex.rows)
        sources = Counter(row["answer_source"] for row in ex.rows)
        out += ["## Verdicts and answer sources", "",
                _md_table(["verdict", "rows"], [[k, n] for k, n in sorted(verdicts.items())]), "",
                _md_table(["answer source", "rows"], [[k, n] for k, n in sorted(sources.items())]), ""]
    else:
        out += ["Each row is a preference pair from discrimination: `prompt`, `chosen` (the answer the referee "
                "scored higher, the teacher's or the student's: `chosen_by`), `rejected` (the other), "
                "`chosen_score` / `rejected_score` (means over both orders, 1-10) and `gap`. Only pairs whose two "
                "orders agree are kept (the same answer preferred with either shown first, no tie).", ""]
        counts = Counter((row["round"], row["chosen_by"]) for row in ex.rows)
        out += ["## Pairs per round", "",
                _md_table(["round", "chosen", "pairs"], [[r, k, n] for (r, k), n in sorted(counts.items())]), ""]
    out += ["## Left out", ""]
    out += ([_md_table(["reason", "rows"], [[k, n] for k, n in sorted(ex.left_out.items())]), ""]
            if ex.left_out else ["Nothing.", ""])
    roles = [[role, getattr(cfg.llm, role).model, getattr(cfg.llm, role).temperature]
             for role in ("teacher", "referee", "generator")]
    out += ["## Models", "", _md_table(["role", "model", "temperature"], roles), "",
            f"Student: `{cfg.student.model}` ({cfg.student.mode}, objective {cfg.student.objective}).", ""]
    from .snapshots import per_role, read_snapshots

    snaps = per_role(read_snapshots(run.layout.calls_file(cfg.llm.cache_path)))
    out += ["### Served snapshots", "",
            "The model each provider said answered (`model` in its responses), per role, with the paid calls it "
            "served; every answer, verdict and generated instruction records its own (lion.snapshots).", ""]
    rows = [[role, model, served, n, len(entry["fingerprints"])] for role, models in snaps.items()
            for model, entry in models.items() for served, n in entry["snapshots"].items()]
    out += ([_md_table(["role", "configured model", "served snapshot", "paid calls", "system fingerprints"], rows), ""]
            if rows else ["No paid call recorded a served snapshot (a run from before lion recorded them).", ""])
    usage = read_json_or_empty(run.layout.usage)
    total = usage.get("total", {})
    out += ["## Spend (the whole run so far)", ""]
    if total:
        out += [f"{total.get('calls', 0)} LLM calls ({total.get('cached', 0)} replayed from cache, "
                f"{total.get('failed', 0)} failed), {total.get('tokens_in', 0)} tokens in, "
                f"{total.get('tokens_out', 0)} tokens out, USD {total.get('usd', 0.0):.4f}.", ""]
        by_role: Counter[str] = Counter()
        for row in usage.get("by", []):
            by_role[row.get("role", "?")] += float(row.get("usd", 0.0))
        if by_role:
            out += [_md_table(["role", "USD"], [[k, f"{v:.4f}"] for k, v in sorted(by_role.items())]), ""]
    else:
        out += ["No usage ledger (RUN/usage.json) found.", ""]
    from .config import to_dict

    out += ["## Config", "", "The run's resolved config (it names API-key variables, never holds a key):", "",
            "```yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False).strip(), "```", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------- writing


def write_export(run: RunReader, ex: Export, out: ExportPaths) -> None:
    """data.jsonl, dataset/ (datasets.save_to_disk) and README.md, each replaced whole."""
    _write_jsonl(out.jsonl, ex.rows)
    try:
        import datasets
    except ImportError:
        raise LionError("lion export: the datasets folder needs the `datasets` package (pip install 'lion[train]')") \
            from None
    datasets.disable_progress_bars()  # one summary line on stdout is what the command shows
    tmp = out.dataset.with_name(out.dataset.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    datasets.Dataset.from_list(ex.rows).save_to_disk(str(tmp))
    if out.dataset.exists():
        shutil.rmtree(out.dataset)
    tmp.rename(out.dataset)
    atomic_write_text(out.card, dataset_card(run, ex))


def push_to_hub(out: ExportPaths, repo: str, *, private: bool) -> None:
    """Upload the dataset (split "train") and its card to a hub dataset repository (needs network and a token)."""
    import datasets
    from huggingface_hub import HfApi

    ds = datasets.load_from_disk(str(out.dataset))
    datasets.DatasetDict({"train": ds}).push_to_hub(repo, private=private)
    HfApi().upload_file(path_or_fileobj=str(out.card), path_in_repo="README.md", repo_id=repo, repo_type="dataset")


# --------------------------------------------------------------------------------------------- CLI


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lion.export",
                                description="Export a run as SFT data (alpaca, sharegpt, messages) or DPO pairs.")
    p.add_argument("run_dir", help="the run directory")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--round", "-r", type=int, default=None, help="only round R (its Train Pool; dpo: its pairs)")
    which.add_argument("--all", action="store_true", help="every round (the default)")
    p.add_argument("--format", "-f", required=True, choices=FORMATS, help="row format")
    p.add_argument("--out", type=Path, default=None, help="folder to write (default RUN/export/<format>[_round_XX])")
    p.add_argument("--push-to-hub", metavar="REPO", default=None, help="also upload to this hub dataset repo")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: a private repository")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                   help="console level of the lion.* loggers")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from .logs import setup_logging

    setup_logging(args.log_level)
    run, ex = build_export(args.run_dir, args.format, args.round)
    out = ExportPaths(args.out) if args.out is not None else run.layout.export(args.format, args.round)
    write_export(run, ex, out)
    left = ", ".join(f"{n} {reason}" for reason, n in sorted(ex.left_out.items()))
    print(f"exported {len(ex.rows)} {args.format} rows to {out.dir}" + (f" (left out: {left})" if left else ""))
    if args.push_to_hub:
        push_to_hub(out, args.push_to_hub, private=args.private)
        print(f"pushed to the hub: {args.push_to_hub}")
    return 0


if __name__ == "__main__":
    from .errors import cli_main

    cli_main(main, sys.argv[1:])
