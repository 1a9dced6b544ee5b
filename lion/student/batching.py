"""What one optimizer step of a student training holds: rows, examples, tokens; and the optimizer steps.

    from lion.student.batching import batch_plan      # used by lion.student.train when a training starts

`student.per_device_batch_size` counts the items of a micro-batch: examples, or with `student.packing` packed rows,
each holding several examples (as many as fit in `pack_length` tokens). So with packing, per_device_batch_size x
grad_accum x processes rows make an optimizer step of several times that many examples: the paper's "batch 128"
means 128 examples. `student.examples_per_step` (with `grad_accum: 0`) asks for a number of examples instead: the
accumulation is chosen when the training starts, from the round's packed rows (their mean examples per row).
The plan is logged when the training starts (`lion.student`) and recorded in the training's metrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..config import StudentConfig


@dataclass(frozen=True)
class BatchPlan:
    n_examples: int  # trained (after dropping)
    n_rows: int  # dataset items: examples, or packed rows
    world_size: int
    per_device_batch_size: int  # items per process per micro-step
    grad_accum: int  # micro-steps per optimizer step (derived when student.examples_per_step is set)
    rows_per_step: int  # items per optimizer step, all processes together
    examples_per_row: float  # mean (1 without packing)
    examples_per_step: float  # mean: rows_per_step x examples_per_row
    tokens_per_step: float  # mean real (non-pad) tokens per optimizer step
    optimizer_steps: int  # what the Trainer will run (max_steps, or the epochs over the data)

    def to_metrics(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("examples_per_row", "examples_per_step", "tokens_per_step"):
            d[k] = round(d[k], 2)
        return d

    def line(self, cfg: StudentConfig) -> str:
        """The line logged when the training starts."""
        items = "packed rows" if cfg.packing else "examples"
        derived = f" (from student.examples_per_step {cfg.examples_per_step})" if cfg.examples_per_step else ""
        step = (f"{self.per_device_batch_size} x {self.grad_accum} accumulation{derived} x {self.world_size} "
                f"process{'es' if self.world_size > 1 else ''} = {self.rows_per_step} {items}")
        if cfg.packing:
            step += f" ({self.examples_per_row:.2f} examples per row) = {self.examples_per_step:.0f} examples"
        return (f"student training: {self.n_examples} examples"
                + (f" in {self.n_rows} packed rows" if cfg.packing else "")
                + f"; an optimizer step = {step}, {self.tokens_per_step:,.0f} tokens; "
                f"{self.optimizer_steps} optimizer steps")


def derived_grad_accum(cfg: StudentConfig, world: int, examples_per_row: float) -> int:
    """`student.grad_accum`, or with `grad_accum: 0` the accumulation whose step comes closest to
    `student.examples_per_step` examples (at least 1)."""
    if cfg.grad_accum > 0:
        return cfg.grad_accum
    per_micro = cfg.per_device_batch_size * world * examples_per_row
    return max(1, round(cfg.examples_per_step / per_micro))


def batch_plan(cfg: StudentConfig, row_sizes: Sequence[int], row_tokens: Sequence[int], world: int) -> BatchPlan:
    """The plan for a training on `row_sizes` (examples per dataset item: all 1 without packing) with
    `row_tokens` real tokens per item, over `world` processes."""
    n_rows = len(row_sizes)
    n_examples = sum(row_sizes)
    per_row = n_examples / n_rows if n_rows else 0.0
    accum = derived_grad_accum(cfg, world, per_row or 1.0)
    rows_per_step = cfg.per_device_batch_size * accum * world
    tokens_per_row = sum(row_tokens) / n_rows if n_rows else 0.0
    # the Trainer's count: each process's data loader has ceil(rows / (per_device x world)) micro-batches
    micro = math.ceil(n_rows / (cfg.per_device_batch_size * world)) if n_rows else 0
    per_epoch = max(micro // accum + int(micro % accum > 0), 1)
    steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.epochs * per_epoch)
    return BatchPlan(n_examples=n_examples, n_rows=n_rows, world_size=world,
                     per_device_batch_size=cfg.per_device_batch_size, grad_accum=accum, rows_per_step=rows_per_step,
                     examples_per_row=per_row, examples_per_step=rows_per_step * per_row,
                     tokens_per_step=rows_per_step * tokens_per_row, optimizer_steps=steps)
