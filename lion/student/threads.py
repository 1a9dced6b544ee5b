"""CPU thread count for student training and inference.

    with cpu_threads(model, setting=cfg.cpu_threads): trainer.train()

Tiny models gain nothing from intra-op parallelism (each matrix is too small to split) and lose badly when the
cores are shared: measured on a 2-core machine under load, a 30k-parameter LLaMA step took 20 ms with 1 thread
and 0.1-0.9 s with 2 (the threads spin at every barrier while other processes hold the cores). So on CPU,
``setting = 0`` (auto) means 1 thread for models under ``SMALL`` parameters and torch's default above; a positive
setting is used as is. Nothing changes on CUDA.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SMALL = 20_000_000


@contextmanager
def cpu_threads(model: Any, setting: int = 0) -> Iterator[int]:
    import torch

    old = torch.get_num_threads()
    if torch.cuda.is_available():
        yield old
        return
    if setting > 0:
        n = setting
    else:
        n_params = sum(p.numel() for p in model.parameters())
        n = 1 if n_params < SMALL else old
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(old)
