"""How surprised the student is by the teacher's answers: mean per-token loss on the answer, batched.

    python -m lion.student.score --model RUN/round_01/student --data rows.jsonl [--config CFG]   # rows: instruction, input?, output

Python: ``answer_losses(model_path, prompts, answers, cfg.student.infer, max_length=...) -> list[float | None]``,
``answer_nll(...) -> list[(summed NLL, tokens) | None]``;
``topk_kl(model_path, prompts, answers, logprobs, cfg.student.infer, max_length=...)``: the mean KL from the
teacher's top-k logprobs (+ tail) to the model on the same answer tokens (lion.student.kd).

The student sees exactly what it sees in training (`lion.student.data.tokenize_example`: BOS + prompt, then the
answer and EOS), and the loss is the mean negative log-likelihood (nats) over the answer tokens and EOS, the same
tokens the training loss falls on. A pair whose prompt alone fills `max_length` has no answer token to score:
its loss is None (counted by the caller, never a number). Rows are sorted by length and right-padded in batches of
`cfg.batch_size`; padding is masked out, so a row's loss does not depend on its batch.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import InferConfig
from ..errors import DataError
from .checkpoint import checkpoint_info
from .data import IGNORE, tokenize_example


def answer_losses(
    model_path: str | Path,
    prompts: Sequence[str],
    answers: Sequence[str],
    cfg: InferConfig,
    *,
    max_length: int,
    progress: bool = False,
) -> list[float | None]:
    """Mean per-token loss (nats) of the model at `model_path` on each answer after its formatted prompt."""
    return [None if s is None else s[0] / max(1, s[1]) for s in answer_nll(
        model_path, prompts, answers, cfg, max_length=max_length, progress=progress)]


def answer_nll(
    model_path: str | Path,
    prompts: Sequence[str],
    answers: Sequence[str],
    cfg: InferConfig,
    *,
    max_length: int,
    progress: bool = False,
) -> list[tuple[float, int] | None]:
    """(summed negative log-likelihood in nats, tokens) of each answer (its tokens and EOS, as training scores them)
    after its formatted prompt; None where the prompt leaves no answer token. The sum is what a preference stage
    takes as the reference model's log-probability of an answer (lion.student.objectives)."""
    import torch
    from tqdm.auto import tqdm

    from .infer import load_model, load_tokenizer
    from .threads import cpu_threads

    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    if not prompts:
        return []
    info = checkpoint_info(model_path)
    tokenizer = load_tokenizer(info.adapter if info.adapter is not None else model_path, info.base)
    model = load_model(info.base, cfg, adapter=info.adapter)
    rows = [tokenize_example(tokenizer, p, a, max_length)[0] for p, a in zip(prompts, answers, strict=True)]
    out: list[tuple[float, int] | None] = [None] * len(rows)
    order = sorted((i for i, r in enumerate(rows) if r is not None), key=lambda i: (-len(rows[i]), i))  # type: ignore[arg-type]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    with cpu_threads(model, cfg.cpu_threads), torch.inference_mode():
        for batch in tqdm(batches, desc="student loss", unit="batch", disable=not progress):
            width = max(len(rows[i]) for i in batch)  # type: ignore[arg-type]
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, i in enumerate(batch):
                row = rows[i]
                assert row is not None
                n = len(row)
                ids[b, :n] = torch.tensor(row.input_ids)
                labels[b, :n] = torch.tensor(row.labels)
                mask[b, :n] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            # token t is predicted from position t - 1
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            target = labels[:, 1:].to(device)
            keep = target != IGNORE
            nll = -logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep
            sums, counts = nll.sum(-1), keep.sum(-1)
            for b, i in enumerate(batch):
                out[i] = (float(sums[b]), int(counts[b]))
    return out


def topk_kl(
    model_path: str | Path,
    prompts: Sequence[str],
    answers: Sequence[str],
    logprobs: Sequence[bytes | None],
    cfg: InferConfig,
    *,
    max_length: int,
    top_k: int = 0,
) -> list[float | None]:
    """Mean per-token forward KL (nats) from the teacher's top-k (+ tail bucket) to the model at `model_path`, over
    the answer tokens that have teacher targets (lion.student.kd: the loss of student.objective topk_kd at weight
    1); None where the answer has no logprobs, or the model's tokenizer does not reproduce the teacher's tokens."""
    import torch

    from .infer import load_model, load_tokenizer
    from .kd import TokenAligner, layout, topk_kd_loss
    from .threads import cpu_threads

    if not (len(prompts) == len(answers) == len(logprobs)):
        raise ValueError("prompts, answers and logprobs differ in length")
    info = checkpoint_info(model_path)
    tokenizer = load_tokenizer(info.adapter if info.adapter is not None else model_path, info.base)
    model = load_model(info.base, cfg, adapter=info.adapter)
    aligner = TokenAligner(tokenizer, top_k)
    rows = []
    for p, a, blob in zip(prompts, answers, logprobs, strict=True):
        row = tokenize_example(tokenizer, p, a, max_length)[0]
        if row is not None:
            start = sum(1 for x in row.labels if x == IGNORE)
            row.kd = aligner.align(row.input_ids[start:], start, blob)
        rows.append(row if row is not None and row.kd is not None else None)
    out: list[float | None] = [None] * len(rows)
    device = next(model.parameters()).device
    with cpu_threads(model, cfg.cpu_threads), torch.inference_mode():
        for i, row in enumerate(rows):
            if row is None:
                continue
            kd = layout([(0, 0, row)], (1, len(row)))
            assert kd is not None
            labels = torch.tensor([row.labels])
            # only the positions with teacher targets: the others would add their cross-entropy at weight 1
            has = (kd["kd_ids"] >= 0).any(-1)
            labels = torch.where(has, labels, torch.full_like(labels, IGNORE))
            logits = model(input_ids=torch.tensor([row.input_ids], device=device)).logits.float().cpu()
            total, n = topk_kd_loss(logits, labels, kd["kd_ids"], kd["kd_logp"], 1.0)
            out[i] = float(total) / int(n) if int(n) else None
    return out


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lion.student.score", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="student checkpoint dir (full model or adapter), or a base model")
    p.add_argument("--data", required=True, type=Path, help="JSONL rows with instruction (+ input) and output")
    p.add_argument("--config", "-c", help="YAML config: student.infer, student.prompt_format, student.max_length")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from ..records import iter_jsonl
    from .data import format_prompt
    from .infer import load_prompt_tokenizer

    args = make_parser().parse_args(argv)
    fmt, cfg, max_length = "alpaca", InferConfig(), 1024
    if args.config:
        from ..config import load_config

        student = load_config(args.config, args.overrides).student
        fmt, cfg, max_length = student.prompt_format, student.infer, student.max_length
    if not args.data.is_file():
        raise DataError(f"{args.data}: no such file")
    rows: list[dict[str, Any]] = []
    for lineno, row in iter_jsonl(args.data):
        if not isinstance(row, dict) or not isinstance(row.get("instruction"), str) or not isinstance(row.get("output"), str):
            raise DataError(f"{args.data}:{lineno}: expected an object with string 'instruction' and 'output'")
        rows.append(row)
    tok = load_prompt_tokenizer(args.model) if fmt == "chat_template" else None
    prompts = [format_prompt(r["instruction"], r.get("input") or "", fmt=fmt, tokenizer=tok) for r in rows]
    losses = answer_losses(args.model, prompts, [r["output"] for r in rows], cfg, max_length=max_length)
    for i, (row, loss) in enumerate(zip(rows, losses, strict=True)):
        print(json.dumps({"id": row.get("id", i), "loss": loss}))
    return 0


if __name__ == "__main__":
    from ..errors import cli_main

    cli_main(main, sys.argv[1:])
