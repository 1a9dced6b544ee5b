"""Models past or near the shutdown date their provider announced: lion/model_retirements.yaml, read by `lion plan`
and `lion config` (and `python -m lion.snapshots --check CFG`).

    from lion.retirements import retirement_warnings
    retirement_warnings({"llm.teacher.model": "gpt-3.5-turbo"})      # -> ["llm.teacher.model: ... shut down on ..."]

lion/model_retirements.yaml lists models with the shutdown date their provider announced, the replacement it
recommends and the page it was read from; a configured model past that date or within `NEAR_DAYS` of it is
warned about. Add a row when a provider announces one.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

NEAR_DAYS = 90
RETIREMENTS = Path(__file__).with_name("model_retirements.yaml")


def load_retirements(path: Path = RETIREMENTS) -> list[dict[str, Any]]:
    import yaml

    from .errors import DataError

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    rows = data.get("models") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a top-level 'models' list")
    for i, r in enumerate(rows):
        if not (isinstance(r, dict) and isinstance(r.get("models"), list) and r.get("shutdown") and r.get("source")):
            raise DataError(f"{path}: models[{i}] needs models (a list), shutdown (a date) and source")
        r["shutdown"] = dt.date.fromisoformat(str(r["shutdown"]))
    return rows


def _base(model: str) -> str:
    return model.rsplit("/", 1)[-1]  # a router prefix (openai/gpt-4o) names the same model


def retirement_warnings(models: dict[str, str], today: dt.date | None = None, near_days: int = NEAR_DAYS,
                        table: list[dict[str, Any]] | None = None) -> list[str]:
    """One warning per configured model ({config key: model name}) past its announced shutdown or within
    `near_days` of it."""
    today = today or dt.date.today()
    rows = load_retirements() if table is None else table
    out = []
    for key, model in models.items():
        for r in rows:
            if _base(model) not in r["models"]:
                continue
            days = (r["shutdown"] - today).days
            repl = f"; the provider recommends {r['replacement']}" if r.get("replacement") else ""
            if days < 0:
                out.append(f"{key}: {model} was shut down on {r['shutdown']} ({r['provider']}, {r['source']}){repl}")
            elif days <= near_days:
                out.append(f"{key}: {model} shuts down on {r['shutdown']}, in {days} days ({r['provider']}, "
                           f"{r['source']}){repl}: a run that outlives it fails from that day")
            break
    return out


