"""The run directory's layout: every file a run writes has one named path here, and nowhere else.

    from lion.layout import RunLayout
    run = RunLayout("runs/smoke"); run.round(1).split      # runs/smoke/round_01/split.jsonl

Renaming a file means changing one line of this module. The layout is pure path arithmetic: nothing here
creates a folder or reads a file (the writers in `lion.records` create parent folders as they write), except
`rounds()`, which lists the round folders that exist. What the files hold: docs/run-dir.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PHASES = ("imitation", "discrimination", "generation")
OPTIONAL_PHASES = ("preference",)  # run only when configured (imitation.preference), after discrimination
CONTROL_STEPS = ("selection", "imitation")  # the control student's steps with a .done marker (lion.control)

_ROUND = re.compile(r"^round_(\d+)$")


def training_checkpoints(student_dir: Path) -> Path:
    """Where the training that writes `student_dir` keeps its mid-training checkpoints (STUDENT.ckpt/)."""
    student_dir = Path(student_dir)
    return student_dir.with_name(student_dir.name + ".ckpt")


def answer_logprobs(answers: Path) -> Path:
    """Where an answer store keeps its logprobs: teacher_answers.jsonl -> teacher_answers.logprobs.bin beside it."""
    answers = Path(answers)
    return answers.with_name(answers.stem + ".logprobs.bin")


CHECKPOINT_DONE = "lion_checkpoint.json"  # inside each checkpoint-N/ of a STUDENT.ckpt/: written last
TRAINING_FINGERPRINT = "lion_training.json"  # in STUDENT.ckpt/: which training the checkpoints belong to


@dataclass(frozen=True)
class EvalPaths:
    """The files of one evaluation (round_XX/eval/ or RUN/eval/<name>/); see lion.evaluate."""

    dir: Path

    @property
    def questions(self) -> Path:
        return self.dir / "questions.jsonl"

    @property
    def candidate_answers(self) -> Path:
        return self.dir / "candidate_answers.jsonl"

    @property
    def answers(self) -> Path:
        return self.dir / "answers.jsonl"

    @property
    def judgements(self) -> Path:
        return self.dir / "judgements.jsonl"

    @property
    def table(self) -> Path:
        return self.dir / "table.jsonl"

    @property
    def table_md(self) -> Path:
        return self.dir / "table.md"

    @property
    def summary(self) -> Path:
        """Written last: its presence (with the evaluation's fingerprint) marks the evaluation done."""
        return self.dir / "summary.json"

    @property
    def summary_txt(self) -> Path:
        return self.dir / "summary.txt"

    @property
    def meta(self) -> Path:
        return self.dir / "eval_meta.json"

    # standard benchmarks (eval.benchmarks, lion.benchmarks)
    @property
    def benchmarks_dir(self) -> Path:
        return self.dir / "benchmarks"

    def benchmark(self, task: str) -> Path:
        """One task's lm-eval results and settings, written when the task has finished (its resume point)."""
        return self.benchmarks_dir / f"{task}.json"

    def benchmark_error(self, task: str) -> Path:
        """The one-line error of a task that failed (removed when it runs again and finishes)."""
        return self.benchmarks_dir / f"{task}.error.json"

    @property
    def benchmarks(self) -> Path:
        """Every configured task's headline metric and their mean (rewritten after each task)."""
        return self.dir / "benchmarks.json"


@dataclass(frozen=True)
class ExportPaths:
    """The files of one export (`lion export RUN --format F`, default RUN/export/<F>/); see lion.export."""

    dir: Path

    @property
    def jsonl(self) -> Path:
        return self.dir / "data.jsonl"

    @property
    def dataset(self) -> Path:
        """The same rows as a `datasets` folder (`datasets.load_from_disk`)."""
        return self.dir / "dataset"

    @property
    def card(self) -> Path:
        """The dataset card (how it was made, counts, models, spend, config)."""
        return self.dir / "README.md"


@dataclass(frozen=True)
class RoundPaths:
    """The files of one round (round_XX/)."""

    root: Path  # the run directory
    no: int

    @property
    def dir(self) -> Path:
        return self.root / f"round_{self.no:02d}"

    # pools the round started with (lion.pools)
    @property
    def train_pool(self) -> Path:
        return self.dir / "train_pool.jsonl"

    @property
    def cache_pool(self) -> Path:
        return self.dir / "cache_pool.jsonl"

    # imitation
    @property
    def student(self) -> Path:
        """This round's student checkpoint (a folder)."""
        return self.dir / "student"

    @property
    def student_ckpt(self) -> Path:
        """Mid-training checkpoints of this round's training (a folder, removed once `student` is saved)."""
        return training_checkpoints(self.student)

    # discrimination
    @property
    def student_answers(self) -> Path:
        return self.dir / "student_answers.jsonl"

    @property
    def judgements(self) -> Path:
        return self.dir / "judgements.jsonl"

    @property
    def split(self) -> Path:
        return self.dir / "split.jsonl"

    @property
    def discrimination_progress(self) -> Path:
        """Chunks of the Cache Pool judged so far and the byte lengths of the appended files at that point
        (the resume point of a discrimination in progress; removed when the phase is done)."""
        return self.dir / "discrimination.progress.json"

    def shadow_split(self, selector: str) -> Path:
        """The split a shadow selector (discrimination.shadow_selectors) would have made, for the record."""
        return self.dir / f"shadow_{selector}_split.jsonl"

    def shadow_judgements(self, selector: str) -> Path:
        """A shadow referee's verdicts (raw text kept), like judgements.jsonl."""
        return self.dir / f"shadow_{selector}_judgements.jsonl"

    def shadow_files(self) -> list[Path]:
        """Every shadow selector's split and verdict files written so far."""
        return sorted(self.dir.glob("shadow_*_split.jsonl")) + sorted(self.dir.glob("shadow_*_judgements.jsonl"))

    @property
    def probe_losses(self) -> Path:
        """selector progress: the probe set's per-item loss before and after this round's training, with clusters."""
        return self.dir / "probe_losses.jsonl"

    @property
    def allocation(self) -> Path:
        """selector progress: each cluster's gain per new example, share of the hard items, and count."""
        return self.dir / "allocation.json"

    # preference stage (imitation.preference)
    @property
    def preference_pairs(self) -> Path:
        """The (chosen, rejected) pairs of the round's preference stage, with the reference log-probabilities."""
        return self.dir / "preference_pairs.jsonl"

    @property
    def preference_student(self) -> Path:
        """The round's student after the preference stage: where the next round's training starts."""
        return self.dir / "student_pref"

    # generation
    @property
    def generated(self) -> Path:
        return self.dir / "generated.jsonl"

    @property
    def rejected(self) -> Path:
        return self.dir / "rejected.jsonl"

    # per-round evaluation (eval.every_round)
    @property
    def eval(self) -> EvalPaths:
        return EvalPaths(self.dir / "eval")

    @property
    def eval_summary(self) -> Path:
        """The loop's copy of the round's evaluation summary (eval/summary.json holds the full one)."""
        return self.dir / "eval.json"

    # figures
    def phase_metrics(self, phase: str) -> Path:
        """A phase's figures (imitation.json, discrimination.json, generation.json)."""
        return self.dir / f"{phase}.json"

    @property
    def metrics(self) -> Path:
        """The round's figures gathered (every phase, evaluation and usage)."""
        return self.dir / "metrics.json"

    def done(self, phase: str) -> Path:
        """The phase's completion marker, written last."""
        return self.dir / f"{phase}.done"

    # the control student (eval.control, lion.control)
    @property
    def control(self) -> ControlPaths:
        return ControlPaths(self.root, self.no)


@dataclass(frozen=True)
class ControlPaths(RoundPaths):
    """The control student's files of one round (round_XX/control/; lion.control), under the names the round's own
    files have (train_pool, cache_pool, student, student.ckpt, imitation.json, eval/, eval.json, `<phase>.done`),
    plus the control's new instructions and the paired comparison with the loop's student."""

    @property
    def dir(self) -> Path:
        return self.root / f"round_{self.no:02d}" / "control"

    @property
    def new(self) -> Path:
        """The control's new instructions of this round (drawn from unused seeds, or grown by the generator)."""
        return self.dir / "new.jsonl"

    @property
    def comparison(self) -> Path:
        """The loop's relative score vs the control's on the same questions, the difference and its bootstrap CI."""
        return self.dir / "comparison.json"


@dataclass(frozen=True)
class RunLayout:
    """The files of a run directory (run-level files, and round folders through `round(r)`)."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def calls(self) -> Path:
        """The gateway's call cache and usage ledger (SQLite)."""
        return self.root / "calls.sqlite"

    def calls_file(self, cache_path: str | None = None) -> Path:
        """Where the call cache is: `llm.cache_path` when set (a local disk under a shared run directory), else
        RUN/calls.sqlite."""
        return Path(cache_path) if cache_path else self.calls

    def answer_index(self, cache_path: str | None = None) -> Path:
        """The answer store's index (SQLite, key -> offset in teacher_answers.jsonl; rebuilt from it when missing),
        beside the call cache: RUN/calls.answers.sqlite, or <llm.cache_path stem>.answers.sqlite."""
        calls = self.calls_file(cache_path)
        return calls.with_name(calls.stem + ".answers.sqlite")

    @property
    def usage(self) -> Path:
        return self.root / "usage.json"

    @property
    def teacher_answers(self) -> Path:
        return self.root / "teacher_answers.jsonl"

    @property
    def teacher_logprobs(self) -> Path:
        """The teacher answers' top-k logprobs (llm.teacher.top_logprobs): binary records the answer rows point at."""
        return answer_logprobs(self.teacher_answers)

    @property
    def gateway_log(self) -> Path:
        """One line per batch of calls that had failures (by reason, one example), per submitted or re-polled
        provider batch (batch mode), and per stop (quota, auth, unknown model, refused parameter)."""
        return self.root / "gateway.log"

    @property
    def base_model(self) -> Path:
        """The base student built on the fly: the tiny model (student.model: tiny), or the pretrained model pruned
        to student.init.keep_layers."""
        return self.root / "base_model"

    @property
    def sim_log(self) -> Path:
        """Requests the offline world's server answered."""
        return self.root / "sim_requests.jsonl"

    @property
    def student_server_log(self) -> Path:
        """Output of the servers student.infer.server_command starts (appended, one header line per start)."""
        return self.root / "student_server.log"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def log(self) -> Path:
        """Every lion.* log line of every command run on this directory (appended; lion.logs)."""
        return self.root / "lion.log"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard event files: the loop's per-round figures here, each training's loss in a sub-folder."""
        return self.root / "tensorboard"

    def trainer_logs(self, r: int, track: str = "") -> Path:
        """Round r's Trainer loss curves (TensorBoard); `track` "control": the control student's."""
        return self.tensorboard / (f"train_round_{r:02d}" + (f"_{track}" if track else ""))

    @property
    def wandb(self) -> Path:
        """wandb's own folder (runs, offline runs) for the loop's figures."""
        return self.root / "wandb"

    @property
    def trackers(self) -> Path:
        """Which rounds each tracker has received (so a resumed run never logs a round twice), and run ids."""
        return self.root / "trackers.json"

    def export(self, fmt: str, r: int | None = None) -> ExportPaths:
        """Where `lion export RUN --format fmt [--round r]` writes by default (export/<fmt>, export/<fmt>_round_XX)."""
        return ExportPaths(self.root / "export" / (fmt if r is None else f"{fmt}_round_{r:02d}"))

    @property
    def lock(self) -> Path:
        """The one-writer lock (lion.lock): flock'ed by the process writing the run, naming its host and PID."""
        return self.root / "run.lock"

    @property
    def probe(self) -> Path:
        """selector progress: the held-in probe set (Cache Pool items never in a Train Pool), drawn at round 1."""
        return self.root / "probe.jsonl"

    @property
    def clusters(self) -> Path:
        """selector progress in a real run: the k-means centroids of instruction embeddings, fitted once."""
        return self.root / "clusters.json"

    @property
    def seed_report(self) -> Path:
        """Round 1's seed load report: rows read, duplicates merged, rows rejected (file:line and why)."""
        return self.root / "seed_report.json"

    def eval(self, name: str) -> EvalPaths:
        """An evaluation outside the rounds (`python -m lion.evaluate --model PATH | --base`)."""
        return EvalPaths(self.root / "eval" / name)

    @property
    def evals_dir(self) -> Path:
        return self.root / "eval"

    def round(self, r: int) -> RoundPaths:
        return RoundPaths(self.root, r)

    def control_pools(self) -> list[Path]:
        """The control student's Train and Cache Pools written so far, every round (lion.control): seed rows no
        other draw may take (lion.pools.unused_seeds)."""
        return [p for rp in self.rounds() for p in (rp.control.train_pool, rp.control.cache_pool) if p.exists()]

    def rounds(self) -> list[RoundPaths]:
        """The round folders that exist, in round order."""
        if not self.root.is_dir():
            return []
        found = [int(m.group(1)) for d in self.root.iterdir() if d.is_dir() and (m := _ROUND.match(d.name))]
        return [self.round(r) for r in sorted(found)]
