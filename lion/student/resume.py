"""Mid-training checkpoints of a student training, and resuming from the last one.

    from lion.student.resume import Checkpoints, SaveEvery, TrainingTally     # used by lion.student.train

The checkpoints are the transformers Trainer's own (``checkpoint-N/``: weights or adapter, optimizer, scheduler,
RNG states, trainer state with the step reached), written into ``STUDENT.ckpt/`` beside the student folder the
training will write (`lion.layout.training_checkpoints`), so a restarted training continues from the last one
with ``resume_from_checkpoint`` (the Trainer restores the optimizer, the scheduler, the RNG and skips the
batches already seen) instead of step 0. On top of that, this module makes them safe to resume from:

- complete or ignored: a checkpoint counts only once ``lion_checkpoint.json`` is in it, written after every
  process finished saving (a folder without it is a save cut by a crash, and is deleted); older complete ones
  beyond ``student.save_total_limit`` are deleted only after a newer one is complete;
- of this training: ``STUDENT.ckpt/lion_training.json`` holds a fingerprint of what is trained (examples,
  starting model, seed, the training keys of the config); checkpoints of any other training are discarded;
- when: every ``student.save_steps`` optimizer steps, or with ``save_steps: 0`` after each
  ``student.save_minutes`` of training (rank 0's clock, broadcast so that every process saves together);
- with the figures: the losses, step times and token counts of the steps before the checkpoint travel in its
  marker, so the finished training reports the whole run, not just the part after the last restart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import StudentConfig
from ..layout import CHECKPOINT_DONE, TRAINING_FINGERPRINT
from ..records import write_json

_CKPT = re.compile(r"^checkpoint-(\d+)$")

# StudentConfig keys that do not change what a training computes (a resumed training may change them freely)
NOT_TRAINING = ("infer", "save_steps", "save_minutes", "save_total_limit", "report_to", "logging_steps",
                "cpu_threads", "continue_from_previous")
# training keys added after trainings were first fingerprinted, left out at these values (what a training without
# the key computed), so that a training started before the key existed still resumes and is still recognised
LATER_KEYS: dict[str, Any] = {"examples_per_step": 0}


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def training_fingerprint(cfg: StudentConfig, examples: list[dict[str, Any]], init_from: str | Path, seed: int) -> str:
    """What a training computes: its examples, starting point, seed and training keys (world size included)."""
    keys = {k: v for k, v in dataclasses.asdict(cfg).items()  # num_gpus, nnodes: the world
            if k not in NOT_TRAINING and not (k in LATER_KEYS and v == LATER_KEYS[k])}
    start = str(Path(init_from).resolve()) if Path(init_from).exists() else str(init_from)
    h = hashlib.sha256()
    h.update(json.dumps({"cfg": keys, "init_from": start, "seed": seed}, sort_keys=True, default=str).encode())
    for ex in examples:
        h.update(json.dumps(ex, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:24]


# --------------------------------------------------------------------------------------------- the folder


@dataclass
class Checkpoints:
    """STUDENT.ckpt/: the Trainer's checkpoint-N folders of one training (identified by `fingerprint`)."""

    dir: Path
    fingerprint: str
    keep: int = 1

    def numbered(self) -> list[tuple[int, Path]]:
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.dir.iterdir() if p.is_dir() and (m := _CKPT.match(p.name))]
        return sorted(found)

    def complete(self) -> list[tuple[int, Path]]:
        return [(n, p) for n, p in self.numbered() if (p / CHECKPOINT_DONE).is_file()]

    def prepare(self) -> Path | None:
        """Make the folder this training's (rank 0 discards another training's checkpoints and cut saves);
        every process then gets the newest complete checkpoint, or None to start from step 0."""
        if _rank() == 0:
            fp_file = self.dir / TRAINING_FINGERPRINT
            mine = fp_file.is_file() and _read(fp_file).get("fingerprint") == self.fingerprint
            if self.dir.exists() and not mine:
                if self.numbered():
                    print(f"note: {self.dir}: discarding the checkpoints of another training (other examples, "
                          "starting model or training keys)", flush=True)
                shutil.rmtree(self.dir)
            for _, p in self.numbered():
                if not (p / CHECKPOINT_DONE).is_file():
                    shutil.rmtree(p, ignore_errors=True)  # a save cut by a crash
            write_json(fp_file, {"fingerprint": self.fingerprint})
        _barrier()
        done = self.complete()
        return done[-1][1] if done else None

    def seal(self, step: int, tally: dict[str, Any]) -> None:
        """Called once checkpoint-`step` is fully written by every process: mark it complete, drop older ones."""
        _barrier()
        if _rank() == 0:
            path = self.dir / f"checkpoint-{step}"
            write_json(path / CHECKPOINT_DONE, {"step": step, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                                "tally": tally})
            for _, old in self.complete()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        _barrier()

    def tally_of(self, path: Path) -> dict[str, Any]:
        return _read(path / CHECKPOINT_DONE).get("tally", {})

    def remove(self, keep_logs_in: Path | None = None) -> None:
        """The training is saved: drop the checkpoints (moving any Trainer logs, e.g. tensorboard, first)."""
        if not self.dir.exists():
            return
        if keep_logs_in is not None:
            for p in self.dir.iterdir():
                if not _CKPT.match(p.name) and p.name != TRAINING_FINGERPRINT:
                    keep_logs_in.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(p), str(keep_logs_in / p.name))
        shutil.rmtree(self.dir, ignore_errors=True)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# --------------------------------------------------------------------------------------------- figures


@dataclass
class TrainingTally:
    """The training's figures, counted on the batches actually trained on, and carried across restarts."""

    tokens: int = 0  # real (non-pad) tokens
    supervised: int = 0
    padded: int = 0  # token slots including padding
    losses: list[float] = field(default_factory=list)  # logged losses
    loss_sum: float = 0.0  # sum of per-step losses (from the logged means)
    loss_steps: int = 0
    step_s: list[float] = field(default_factory=list)
    step_tokens: list[int] = field(default_factory=list)
    resumed_at: list[int] = field(default_factory=list)  # steps this training was resumed from
    checkpoints: int = 0  # mid-training checkpoints written (those before a restart included)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainingTally:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def counting_collator(collator: Any) -> Any:
    """Wrap a lion collator (with .tokens/.supervised/.padded counters) so each batch carries its own counts
    under "_lion_counts"; `TalliedTrainer` pops them when it trains on the batch. Counting at collation would
    also count the batch the data loader fetches ahead, and the batches a resumed training skips."""

    def collate(items: list[Any]) -> dict[str, Any]:
        before = (collator.tokens, collator.supervised, collator.padded)
        batch = collator(items)
        batch["_lion_counts"] = [collator.tokens - before[0], collator.supervised - before[1],
                                 collator.padded - before[2]]
        return batch

    return collate


def tallied_trainer(tally: TrainingTally):
    """A transformers Trainer subclass that adds each trained batch's counts to `tally`."""
    from transformers import Trainer

    class TalliedTrainer(Trainer):
        def training_step(self, model, inputs, *args, **kwargs):
            counts = inputs.pop("_lion_counts", None)
            if counts is not None:
                tally.tokens += int(counts[0])
                tally.supervised += int(counts[1])
                tally.padded += int(counts[2])
            return super().training_step(model, inputs, *args, **kwargs)

    return TalliedTrainer


def meter_callback(tally: TrainingTally, ckpts: Checkpoints | None, cfg: StudentConfig):
    """Per-step wall time and tokens, logged losses, and the checkpoint schedule (`SaveEvery`)."""
    import torch
    from transformers import TrainerCallback

    every_s = cfg.save_minutes * 60.0 if cfg.save_steps == 0 else 0.0

    class Meter(TrainerCallback):
        def __init__(self) -> None:
            self._t = 0.0
            self._n = 0
            self._last_log_step = 0
            self._last_save = 0.0

        def _sync(self) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()

        def on_train_begin(self, args, state, control, **kw):
            self._sync()
            self._t, self._n = time.perf_counter(), tally.tokens
            self._last_log_step = state.global_step
            self._last_save = time.monotonic()

        def on_step_end(self, args, state, control, **kw):
            self._sync()
            now = time.perf_counter()
            tally.step_s.append(now - self._t)
            tally.step_tokens.append(tally.tokens - self._n)
            self._t, self._n = now, tally.tokens
            due = cfg.save_steps > 0 and state.global_step % cfg.save_steps == 0
            if ckpts is not None and every_s > 0:
                due = _agreed(time.monotonic() - self._last_save >= every_s)
            # the Trainer also saves after the last step; the round's student is saved then anyway, so only a
            # scheduled checkpoint is written (a full one costs the optimizer state on disk)
            control.should_save = ckpts is not None and due
            if control.should_save or state.global_step >= state.max_steps:
                control.should_log = True  # every step's loss is in the figures a checkpoint carries

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                loss = float(logs["loss"])
                tally.losses.append(loss)
                tally.loss_sum += loss * (state.global_step - self._last_log_step)
                tally.loss_steps = state.global_step
                self._last_log_step = state.global_step

        def on_save(self, args, state, control, **kw):
            self._last_save = time.monotonic()
            if ckpts is not None:
                tally.checkpoints += 1
                ckpts.seal(state.global_step, tally.to_json())

    return Meter()


def _agreed(due: bool) -> bool:
    """Rank 0's decision, the same on every process (a save is collective under FSDP / DeepSpeed)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return due
    t = torch.tensor([1 if due else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.broadcast(t, src=0)
    return bool(t.item())


def save_arguments(cfg: StudentConfig) -> dict[str, Any]:
    """The TrainingArguments of the checkpoint schedule (the Trainer writes; `Checkpoints` rotates)."""
    if cfg.save_steps > 0:
        return {"save_strategy": "steps", "save_steps": cfg.save_steps}
    if cfg.save_minutes > 0:  # by time: the meter asks for each save; the step schedule never fires by itself
        return {"save_strategy": "steps", "save_steps": 10**12}
    return {"save_strategy": "no"}
