"""The loop's per-round figures to experiment trackers (TensorBoard, wandb), beside the Trainer's loss curves.

    from lion.trackers import open_trackers, round_scalars
    with open_trackers(cfg, RunLayout(run_dir)) as trackers:
        trackers.log_round(metrics)            # a round's gathered figures (lion.roundtable.collect_round + usage)

`student.report_to` names the trackers (`tensorboard`, `wandb`, or a list). What each receives per round, with
the round number as the step (`round_scalars`): the hard ratio, mean teacher/student scores and gap, swap-flip
rate, parse failures, hard/easy/excluded counts, accepted and rejected new instructions (and rejections by
reason), the evaluation's relative score and the offline world's accuracies, the training loss and throughput,
the benchmarks (`bench/<task>`, `bench/mean`), the control student (`control/loop`, `control/control`,
`control/difference` with `control/ci_low` / `ci_high`, its benchmarks), and the cumulative spend (USD, tokens,
calls). The Trainer's own loss goes to the same places (TensorBoard:
`RUN/tensorboard/train_round_XX/`; wandb: a run of its own per training, project `WANDB_PROJECT`).

- TensorBoard: event files in `RUN/tensorboard/` (`tensorboard --logdir RUN/tensorboard`).
- wandb: one run for the loop in project `log.wandb_project`, its id kept in `RUN/trackers.json`, so a resumed
  run continues the same wandb run; files under `RUN/wandb/`. `WANDB_MODE=offline` keeps everything on disk
  (`wandb sync RUN/wandb/offline-run-*` uploads it later).
A round is sent to each tracker once: `RUN/trackers.json` records which rounds each one has received, so a
resumed run (which gathers every round's figures again) never draws a point twice.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from .config import LionConfig
from .errors import ConfigError
from .layout import RunLayout
from .records import read_json_or_empty, write_json

log = logging.getLogger("lion.trackers")

KNOWN = ("tensorboard", "wandb")


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def round_scalars(m: dict[str, Any]) -> dict[str, float]:
    """A round's figures (metrics.json) as flat `section/name` scalars; missing figures are left out, not zeroed."""
    out: dict[str, Any] = {}
    im = m.get("imitation", {})
    out["imitation/n_train"] = im.get("n_train")
    out["imitation/n_failed_answers"] = im.get("n_failed_answers")
    train = im.get("train", {})
    for k in ("train_loss", "train_loss_last", "tokens_per_s", "seconds", "steps"):
        out[f"imitation/{k}"] = train.get(k)
    d = m.get("discrimination", {})
    for k in ("hard_ratio", "teacher_mean", "student_mean", "gap_mean", "swap_flip_rate", "parse_failures",
              "parse_failure_rate", "hard", "easy", "excluded", "n"):
        out[f"discrimination/{k}"] = d.get(k)
    g = m.get("generation", {})
    if g:
        for kind, n in g.get("accepted", {}).items():
            out[f"generation/accepted_{kind}"] = n
        rejected = g.get("rejected", {})
        out["generation/rejected"] = sum(v for v in rejected.values() if _num(v) is not None)
        for reason, n in rejected.items():
            out[f"generation/rejected_{reason}"] = n
        out["generation/requests"] = sum(v for v in g.get("requests", {}).values() if _num(v) is not None)
    ev = m.get("eval", {})
    if ev:
        overall = ev.get("overall", {})
        out["eval/relative_mean"] = overall.get("relative", {}).get("mean")
        out["eval/n_scored"] = overall.get("n_scored")
        out["eval/held_out_accuracy"] = ev.get("oracle", {}).get("overall")
    out["oracle/pool_accuracy"] = m.get("oracle", {}).get("overall")
    bench = m.get("benchmarks", {})
    out["bench/mean"] = bench.get("mean")
    for task, h in (bench.get("tasks") or {}).items():
        out[f"bench/{task}"] = (h or {}).get("value")
    ctl = m.get("control", {})
    if ctl:
        c = ctl.get("comparison", {})
        for k in ("loop", "control", "difference", "ci_low", "ci_high", "n"):
            out[f"control/{k}"] = c.get(k)
        out["control/n_new"] = ctl.get("selection", {}).get("new")
        out["control/n_train"] = ctl.get("imitation", {}).get("n_train")
        out["control/train_loss"] = ctl.get("imitation", {}).get("train", {}).get("train_loss")
        out["control/bench_mean"] = ctl.get("benchmarks", {}).get("mean")
        for task, h in (ctl.get("benchmarks", {}).get("tasks") or {}).items():
            out[f"control/bench/{task}"] = (h or {}).get("value")
    total = m.get("usage", {}).get("total", {})
    for k in ("usd", "tokens_in", "tokens_out", "calls", "cached", "failed"):
        out[f"spend/{k}"] = total.get(k)
    return {k: f for k, v in out.items() if (f := _num(v)) is not None}


class Tracker(Protocol):
    """One destination of the loop's figures."""

    name: str

    def log_round(self, r: int, scalars: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, logdir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("student.report_to: tensorboard needs the tensorboard package "
                              "(pip install 'lion[train]' or pip install tensorboard)") from None
        self.writer = SummaryWriter(log_dir=str(logdir))

    def log_round(self, r: int, scalars: dict[str, float]) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, global_step=r)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    name = "wandb"

    def __init__(self, cfg: LionConfig, layout: RunLayout, run_id: str | None) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError("student.report_to: wandb needs the wandb package (pip install wandb)") from None
        layout.wandb.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("WANDB_PROJECT", cfg.log.wandb_project)  # the Trainer's runs join the same project
        os.environ.setdefault("WANDB_DIR", str(layout.root))  # ... and keep their files in the run directory too
        from .config import to_dict

        self.run = wandb.init(project=cfg.log.wandb_project, id=run_id, resume="allow", dir=str(layout.root),
                              name=Path(cfg.run_dir).resolve().name, job_type="lion-loop",
                              config=to_dict(cfg), reinit="create_new")  # not the global run: a Trainer makes its own
        self.run.define_metric("round")
        self.run.define_metric("*", step_metric="round")
        self.id = self.run.id

    def log_round(self, r: int, scalars: dict[str, float]) -> None:
        self.run.log({"round": r, **scalars})

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """The trackers of one run; each round goes to each tracker once (RUN/trackers.json)."""

    def __init__(self, cfg: LionConfig, layout: RunLayout, names: Sequence[str]) -> None:
        self.layout = layout
        self.state = read_json_or_empty(layout.trackers)
        self.trackers: list[Tracker] = []
        for name in names:
            if name not in KNOWN:
                raise ConfigError(f"student.report_to: unknown tracker {name!r} (known: {', '.join(KNOWN)})")
        try:
            for name in names:
                if name == "tensorboard":
                    self.trackers.append(TensorBoardTracker(layout.tensorboard))
                elif name == "wandb":
                    w = WandbTracker(cfg, layout, self.state.get("wandb", {}).get("id"))
                    self.state.setdefault("wandb", {})["id"] = w.id
                    self.trackers.append(w)
        except BaseException:
            self.close()
            raise
        self._save()

    def _save(self) -> None:
        if self.trackers:
            write_json(self.layout.trackers, self.state)

    def log_round(self, m: dict[str, Any]) -> list[str]:
        """Send round m["round"]'s figures to every tracker that has not received it; the names that got it."""
        r = int(m["round"])
        scalars = round_scalars(m)
        sent = []
        for t in self.trackers:
            entry = self.state.setdefault(t.name, {})
            done = set(entry.get("rounds", []))
            if r in done:
                continue
            t.log_round(r, scalars)
            entry["rounds"] = sorted(done | {r})
            sent.append(t.name)
        if sent:
            self._save()
            log.debug("round %d figures sent to %s (%d scalars)", r, ", ".join(sent), len(scalars))
        return sent

    def close(self) -> None:
        for t in self.trackers:
            try:
                t.close()
            except Exception:  # noqa: BLE001 - a tracker failing to close must not hide the run's outcome
                log.warning("closing the %s tracker failed", t.name, exc_info=True)
        self.trackers = []

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def open_trackers(cfg: LionConfig, layout: RunLayout | None = None) -> Trackers:
    """The trackers `student.report_to` names (none: an empty set that logs nothing)."""
    return Trackers(cfg, layout or RunLayout(cfg.run_dir), cfg.student.report_targets())
