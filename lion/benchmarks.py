"""Standard benchmarks on a student with lm-evaluation-harness (`eval.benchmarks`): the paper's BBH and AGIEval.

    python -m lion.benchmarks --config C --round R [--control]     # round R's student (or its control student)
    python -m lion.benchmarks --config C --model PATH [--name N]   # any model directory, into RUN/eval/N/
    python -m lion.benchmarks --config C --check                   # only check the task names

The loop runs the configured tasks on each round's student after its evaluation (and on the control student,
lion.control), through lm-eval's Python API: `lm_eval.simple_evaluate` with its `hf` model (transformers; a LoRA
student is its base model with the adapter as `peft=`) or its `vllm` model (the adapter as `lora_local_path`).
`eval.benchmarks` gives the task (or group) names, the few-shot count, a per-task example limit, the batch size and
`include_path`, a folder of your own task YAMLs (lm-eval's TaskManager include path: offline, a task over a local
JSON file; the hub's tasks such as bbh_zeroshot and agieval_en need the hub for their data).

Results (lion.layout.EvalPaths, in the round's evaluation folder): `benchmarks/<task>.json` per task (lm-eval's
results for it, its settings and its headline metric), written when the task finishes, so a finished task is not
run again (unless its settings changed) and an interrupted round resumes with the tasks left; `benchmarks.json`:
every task's headline metric (the first of acc, exact_match, acc_norm, f1, ... it reports) and their mean, the
round line's number. Unknown task names stop the run before anything is spent (`check_benchmarks`). A task that
fails (lm-eval raises) is recorded in `benchmarks/<task>.error.json` and reported in one line naming it; the tasks
already finished are kept, the loop goes on, and the next run of the same command tries it again.
"""

from __future__ import annotations

import argparse
import difflib
import gc
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from .config import BenchmarksConfig, LionConfig, add_config_args, load_config
from .errors import ConfigError, LionError
from .layout import EvalPaths, RoundPaths
from .records import read_json_or_empty, write_json

log = logging.getLogger("lion.benchmarks")

HEADLINE = ("acc", "exact_match", "acc_norm", "f1", "mc2", "em", "bleu", "rougeL")
BOOTSTRAP_ITERS = 1000  # lm-eval's resamples for the standard errors of metrics it bootstraps


def _lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError:
        raise ConfigError("eval.benchmarks.tasks: needs lm-evaluation-harness 0.4.x: pip install 'lion[bench]' "
                          "(or pip install 'lm-eval>=0.4,<0.5')") from None
    logging.getLogger("lm-eval").setLevel(logging.WARNING)
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    return lm_eval


def task_manager(bc: BenchmarksConfig) -> Any:
    """lm-eval's TaskManager with `include_path`; lm-eval's own task index (~10 s to build) only when a task is not
    one of the folder's."""
    _lm_eval()
    from lm_eval.tasks import TaskManager

    include = bc.include_path
    if include is not None:
        if not Path(include).is_dir():
            raise ConfigError(f"eval.benchmarks.include_path: {include} is not a folder (of lm-eval task YAMLs)")
        own = TaskManager(include_path=include, include_defaults=False)
        if all(t in own.all_tasks for t in bc.tasks):
            return own
    return TaskManager(include_path=include)


def check_benchmarks(cfg: LionConfig) -> None:
    """Every task name of eval.benchmarks.tasks is one lm-eval knows (with include_path): else a ConfigError naming
    it, before anything is spent."""
    bc = cfg.eval.benchmarks
    if not bc.tasks:
        return
    if bc.backend == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise ConfigError("eval.benchmarks.backend: vllm is not installed (pip install 'lion[vllm]'), or use "
                              "backend: hf") from None
    tm = task_manager(bc)
    for t in bc.tasks:
        if t not in tm.all_tasks:
            near = difflib.get_close_matches(t, tm.all_tasks, n=3)
            raise ConfigError(
                f"eval.benchmarks.tasks: unknown task {t!r}"
                + (f" (did you mean {', '.join(near)}?)" if near else "")
                + f"; lm-eval knows {len(tm.all_tasks)} tasks and groups"
                + (f" with include_path {bc.include_path}" if bc.include_path else
                   " (a task of your own: put its YAML in a folder named by eval.benchmarks.include_path)")
            )


def headline(results: dict[str, Any], task: str) -> tuple[str, float] | None:
    """(metric, value) of a task's (or group's) result: the first of HEADLINE it reports; a group without its own
    aggregate gets the mean of its subtasks' headline values."""
    res = results.get("results", {}).get(task) or results.get("groups", {}).get(task) or {}
    for metric in HEADLINE:
        for key, value in res.items():
            if key.split(",")[0] == metric and isinstance(value, (int, float)) and not isinstance(value, bool):
                return key, float(value)
    subtasks = results.get("group_subtasks", {}).get(task) or []
    parts = [h for s in subtasks if (h := headline(results, s)) is not None]
    if parts:
        return f"{parts[0][0]} (mean of {len(parts)} subtasks)", sum(v for _, v in parts) / len(parts)
    return None


def _settings(bc: BenchmarksConfig, model: Path, task: str) -> dict[str, Any]:
    from importlib.metadata import version

    return {"model": str(model.resolve()), "task": task, "num_fewshot": bc.num_fewshot, "limit": bc.limit,
            "backend": bc.backend, "include_path": bc.include_path, "lm_eval": version("lm_eval")}


def _fingerprint(settings: dict[str, Any]) -> str:
    keep = {k: v for k, v in settings.items() if k != "lm_eval"}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def _plain(obj: Any) -> Any:
    """lm-eval's results as plain JSON (numpy numbers and other objects as their float or text)."""
    return json.loads(json.dumps(obj, default=lambda x: float(x) if hasattr(x, "__float__") else str(x)))


def make_lm(cfg: LionConfig, model: Path) -> Any:
    """lm-eval's model for a student directory: its `hf` model (a LoRA adapter through peft=) or its `vllm` one."""
    from .student.checkpoint import checkpoint_info

    bc = cfg.eval.benchmarks
    info = checkpoint_info(model)
    tokenizer = str(model) if (model / "tokenizer_config.json").is_file() else None
    if bc.backend == "vllm":
        from lm_eval.models.vllm_causallms import VLLM

        from .student.vllm_backend import lora_rank, vllm_lora_rank

        ic = cfg.student.infer
        kwargs: dict[str, Any] = {"pretrained": info.base, "tokenizer": tokenizer, "batch_size": bc.batch_size,
                                  "tensor_parallel_size": ic.tensor_parallel,
                                  "gpu_memory_utilization": ic.gpu_memory_utilization}
        if info.adapter is not None:
            kwargs.update(lora_local_path=str(info.adapter), max_lora_rank=vllm_lora_rank(lora_rank(info.adapter)))
        return VLLM(**kwargs)
    import torch
    from lm_eval.models.huggingface import HFLM

    device = bc.device if bc.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    return HFLM(pretrained=info.base, tokenizer=tokenizer, peft=str(info.adapter) if info.adapter else None,
                batch_size=bc.batch_size, device=device)


def run_benchmarks(cfg: LionConfig, model: str | Path, out: EvalPaths, *, name: str = "") -> dict[str, Any]:
    """Run eval.benchmarks' tasks on `model` into `out` (those not finished with these settings yet); the summary
    (also out.benchmarks): per task its headline metric, the failed tasks and the mean over the finished ones."""
    bc, model = cfg.eval.benchmarks, Path(model)
    if not model.is_dir():
        raise LionError(f"{model}: the model to benchmark does not exist")
    settings = {t: _settings(bc, model, t) for t in bc.tasks}
    pending = [t for t in bc.tasks if read_json_or_empty(out.benchmark(t)).get("fingerprint")
               != _fingerprint(settings[t])]
    if pending:
        lm_eval = _lm_eval()
        tm = task_manager(bc)
        lm = make_lm(cfg, model)
        try:
            for task in pending:
                log.info("benchmark %s on %s", task, name or model)
                t0 = time.time()
                try:
                    res = lm_eval.simple_evaluate(model=lm, tasks=[task], num_fewshot=bc.num_fewshot, limit=bc.limit,
                                                  task_manager=tm, log_samples=False, bootstrap_iters=BOOTSTRAP_ITERS)
                    if res is None:
                        raise LionError("lm-eval returned no results")
                    top = headline(res, task)
                except Exception as e:  # noqa: BLE001 - lm-eval raises anything; one task must not stop the loop
                    err = " ".join(f"{type(e).__name__}: {e}".split())[:500]
                    write_json(out.benchmark_error(task), {"task": task, "error": err, "model": str(model),
                                                           "at": time.strftime("%Y-%m-%dT%H:%M:%S")})
                    print(f"warning: eval.benchmarks: task {task} failed on {name or model}: {err}; the tasks "
                          "already finished are kept and the loop goes on; run the same command again to retry it",
                          file=sys.stderr, flush=True)
                    continue
                write_json(out.benchmark(task), {
                    "task": task, "fingerprint": _fingerprint(settings[task]), "settings": settings[task],
                    "headline": None if top is None else {"metric": top[0], "value": top[1]},
                    "seconds": round(time.time() - t0, 1),
                    **_plain({k: res.get(k) for k in ("results", "groups", "group_subtasks", "n-shot", "n-samples",
                                                      "versions", "higher_is_better")}),
                })
                out.benchmark_error(task).unlink(missing_ok=True)
        finally:
            del lm
            gc.collect()
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except ImportError:
                pass
    return summarize_benchmarks(bc.tasks, out, name)


def summarize_benchmarks(tasks: list[str], out: EvalPaths, name: str = "") -> dict[str, Any]:
    """benchmarks.json from the per-task files: each task's headline metric, the failed tasks, the mean."""
    per: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for t in tasks:
        done = read_json_or_empty(out.benchmark(t))
        if done:
            per[t] = done.get("headline")
        elif out.benchmark_error(t).exists():
            failed[t] = read_json_or_empty(out.benchmark_error(t)).get("error", "")
    values = [h["value"] for h in per.values() if h]
    summary = {"name": name, "tasks": per, "failed": failed, "n_tasks": len(tasks), "n_finished": len(per),
               "mean": sum(values) / len(values) if values else None}
    write_json(out.benchmarks, summary)
    return summary


def benchmark_round(cfg: LionConfig, rp: RoundPaths, name: str) -> dict[str, Any] | None:
    """The loop's hook: eval.benchmarks on the student of `rp` (a round's, or its control's) into its eval folder."""
    if not cfg.eval.benchmarks.tasks:
        return None
    return run_benchmarks(cfg, rp.student, rp.eval, name=name)


# --------------------------------------------------------------------------------------------- CLI


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lion.benchmarks", description=__doc__.split("\n\n")[0])
    add_config_args(p)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--round", "-r", type=int, help="round R's student (RUN/round_XX/student)")
    who.add_argument("--model", help="any model directory; results in RUN/eval/NAME/")
    who.add_argument("--check", action="store_true", help="only check that lm-eval knows every task name")
    p.add_argument("--control", action="store_true", help="with --round: the round's control student")
    p.add_argument("--name", default=None, help="with --model: results go to RUN/eval/NAME (default: the dir name)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if not cfg.eval.benchmarks.tasks:
        raise ConfigError("eval.benchmarks.tasks: empty; name the lm-eval tasks to run (--set eval.benchmarks.tasks=[..])")
    check_benchmarks(cfg)
    if args.check:
        print(f"eval.benchmarks.tasks: {', '.join(cfg.eval.benchmarks.tasks)}: known to lm-eval")
        return 0
    from .lock import RunLock
    from .rundir import RunDir

    run = RunDir(cfg.run_dir)
    if args.round is not None:
        rp = run.round(args.round).control if args.control else run.round(args.round)
        model, out, name = rp.student, rp.eval, f"round {args.round}" + (" control" if args.control else "")
        if not model.is_dir():
            raise LionError(f"{model}: round {args.round}'s {'control ' if args.control else ''}student does not exist")
    else:
        model = Path(args.model)
        name = args.name or model.resolve().name
        out = run.eval(name)
    run.root.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run.root)
    lock.acquire()
    try:
        summary = run_benchmarks(cfg, model, out, name=name)
    finally:
        lock.release()
    print(format_benchmarks(summary))
    print(f"saved under {out.benchmarks_dir}")
    return 0 if not summary["failed"] else 1


def format_benchmarks(summary: dict[str, Any]) -> str:
    lines = [f"benchmarks of {summary.get('name') or 'the model'}:"]
    for t, h in summary["tasks"].items():
        lines.append(f"  {t}: " + ("-" if not h else f"{h['metric']} {100 * h['value']:.2f}%"))
    for t, err in summary["failed"].items():
        lines.append(f"  {t}: FAILED ({err})")
    if summary.get("mean") is not None:
        lines.append(f"  mean over {summary['n_finished']} task(s): {100 * summary['mean']:.2f}%")
    return "\n".join(lines)


if __name__ == "__main__":
    from .errors import cli_main

    cli_main(main, sys.argv[1:])
