"""Student training data: prompt format, tokenisation with prompt-loss masking, padding and packing.

    from lion.student.data import format_prompt, tokenize_examples, PaddedCollator, PackedCollator, pack_rows

Used by `python -m lion.student.train` and by the inference backends (so that a prompt is tokenised the same way
at training and at answering time).

- Prompt formats: ``alpaca`` (the paper's: ``### Instruction:\\n{instruction}\\n\\n### Response:\\n``, with an
  ``### Input:\\n{input}\\n\\n`` block before the response when the row has an input), or ``chat_template``
  (the tokenizer's own chat template, one user turn, generation prompt appended), or ``plain``
  (``Q: {instruction}\\nA: ``: few tokens, for tiny character-level students trained on CPU).
- Token ids of one example: ``[bos] + prompt + response + [eos]``; labels are ``-100`` on the prompt, so the loss
  falls on the response and EOS only. The BOS is added only when the tokenizer has one and the prompt text does
  not already start with it (chat templates usually write it themselves).
- An example whose prompt alone fills ``max_length`` is dropped and counted (it would have no supervised token);
  a long response is truncated at ``max_length``.
- Packing: examples are bin-packed (best fit, longest first) into rows of at most ``pack_length`` tokens; each
  example's position ids restart at 0 and no attention mask is passed, which makes transformers build a
  block-diagonal causal mask (or use varlen kernels with flash attention): examples never attend to each other.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, DataError

IGNORE = -100

ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"
ALPACA_PROMPT_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
PLAIN_PROMPT = "Q: {instruction}\nA: "
PLAIN_PROMPT_INPUT = "Q: {instruction}\n{input}\nA: "


def format_prompt(instruction: str, input: str = "", *, fmt: str = "alpaca", tokenizer: Any = None) -> str:
    """The text the student sees before its answer."""
    if fmt == "alpaca":
        if input and input.strip():
            return ALPACA_PROMPT_INPUT.format(instruction=instruction, input=input)
        return ALPACA_PROMPT.format(instruction=instruction)
    if fmt == "plain":  # few tokens: for tiny character-level students on CPU, where every prompt token costs time
        if input and input.strip():
            return PLAIN_PROMPT_INPUT.format(instruction=instruction, input=input)
        return PLAIN_PROMPT.format(instruction=instruction)
    if fmt == "chat_template":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            where = getattr(tokenizer, "name_or_path", "") or "the student tokenizer"
            raise ConfigError(f"student.prompt_format: 'chat_template' but {where} has no chat template; use 'alpaca'")
        content = instruction if not (input and input.strip()) else f"{instruction}\n\n{input}"
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    raise ConfigError(f"student.prompt_format: must be 'alpaca', 'chat_template' or 'plain', got {fmt!r}")


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a formatted prompt, BOS first when the tokenizer has one (same rule in training and inference)."""
    ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids.insert(0, bos)
    return ids


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    kd: Any = None  # lion.student.kd.KDTargets: the teacher's top-k at the answer tokens (objective topk_kd)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class TokenizeStats:
    n_examples: int = 0
    n_dropped: int = 0  # prompt alone fills max_length
    n_truncated: int = 0  # response cut at max_length
    dropped_ids: list[str] = field(default_factory=list)


def tokenize_example(tokenizer: Any, prompt: str, response: str, max_length: int) -> tuple[Tokenized | None, bool]:
    """(tokenized, truncated); None when the prompt leaves no room for a single supervised token."""
    if tokenizer.eos_token_id is None:
        raise ConfigError("student.model: the tokenizer has no EOS token; the student could never learn to stop")
    p = encode_prompt(tokenizer, prompt)
    if len(p) >= max_length:
        return None, False
    r = list(tokenizer(response, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    room = max_length - len(p)
    truncated = len(r) > room
    r = r[:room]
    return Tokenized(p + r, [IGNORE] * len(p) + r), truncated


def tokenize_examples(
    tokenizer: Any,
    examples: Sequence[dict[str, Any]],
    *,
    max_length: int,
    fmt: str = "alpaca",
    source: str = "examples",
    aligner: Any = None,
) -> tuple[list[Tokenized], TokenizeStats]:
    """Tokenise [{"instruction", "input"?, "output"}] rows; bad rows raise DataError naming `source` and the row.
    `aligner` (lion.student.kd.TokenAligner, objective topk_kd): each row's "teacher_logprobs" (base64 of the
    encoded TokenLogprobs) becomes the example's top-k targets where the teacher's tokens are reproduced."""
    out: list[Tokenized] = []
    stats = TokenizeStats(n_examples=len(examples))
    for i, ex in enumerate(examples):
        if not isinstance(ex, dict) or not isinstance(ex.get("instruction"), str) or not isinstance(ex.get("output"), str):
            raise DataError(f"{source}[{i}]: expected a mapping with string 'instruction' and 'output', got {ex!r:.200}")
        inp = ex.get("input") or ""
        if not isinstance(inp, str):
            raise DataError(f"{source}[{i}].input: expected a string, got {type(inp).__name__}")
        prompt = format_prompt(ex["instruction"], inp, fmt=fmt, tokenizer=tokenizer)
        tok, truncated = tokenize_example(tokenizer, prompt, ex["output"], max_length)
        if tok is None:
            stats.n_dropped += 1
            stats.dropped_ids.append(str(ex.get("id", i)))
            continue
        stats.n_truncated += int(truncated)
        if aligner is not None:
            start = sum(1 for x in tok.labels if x == IGNORE)
            tok.kd = aligner.align(tok.input_ids[start:], start, _blob(ex.get("teacher_logprobs"), source, i),
                                   where=str(ex.get("id", i)))
        out.append(tok)
    return out, stats


def _blob(value: Any, source: str, i: int) -> bytes | None:
    import base64
    import binascii

    if value is None:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise DataError(f"{source}[{i}].teacher_logprobs: not base64 of an encoded TokenLogprobs") from None


# --------------------------------------------------------------------------------------------- packing


def pack_rows(lengths: Sequence[int], capacity: int, seed: int = 0) -> list[list[int]]:
    """Best-fit-decreasing bin packing: lists of example indices whose lengths sum to <= capacity, rows shuffled."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (room left, row index)
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"example {i} has {n} tokens, more than the row capacity {capacity}")
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, r = free.pop(k)
        else:
            rows.append([])
            room, r = capacity, len(rows) - 1
        rows[r].append(i)
        room -= n
        if room > 0:
            bisect.insort(free, (room, r))
    rng = random.Random(seed)
    rng.shuffle(rows)
    return rows


class _Counting:
    """Counts the real (non-pad) and supervised tokens the collator has produced (for throughput metrics)."""

    def __init__(self) -> None:
        self.tokens = 0
        self.supervised = 0
        self.padded = 0  # token slots including padding


class PaddedCollator(_Counting):
    """Items are `Tokenized`; right-pads to the longest in the batch, with an attention mask."""

    def __init__(self, pad_id: int, pad_to_multiple_of: int | None = None) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.multiple = pad_to_multiple_of

    def __call__(self, items: list[Tokenized]) -> dict[str, Any]:
        import torch

        width = max(len(t) for t in items)
        if self.multiple:
            width = -(-width // self.multiple) * self.multiple
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for b, t in enumerate(items):
            n = len(t)
            ids[b, :n] = torch.tensor(t.input_ids)
            labels[b, :n] = torch.tensor(t.labels)
            mask[b, :n] = 1
        self.tokens += int(mask.sum())
        self.supervised += int((labels != IGNORE).sum())
        self.padded += ids.numel()
        return {"input_ids": ids, "attention_mask": mask, "labels": labels,
                **_kd_layout([(b, 0, t) for b, t in enumerate(items)], ids.shape)}


class PackedCollator(_Counting):
    """Items are rows (lists of `Tokenized`); concatenates each row with restarting position ids, no attention mask.

    Rows are right-padded to the longest row in the batch; the padding forms its own segment (positions from 0,
    labels -100), so it neither sees nor is seen by the real examples.
    """

    def __init__(self, pad_id: int) -> None:
        super().__init__()
        self.pad_id = pad_id

    def __call__(self, rows: list[list[Tokenized]]) -> dict[str, Any]:
        import torch

        width = max(sum(len(t) for t in row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        real = 0
        placed: list[tuple[int, int, Tokenized]] = []  # (row, start column, example): for the top-k targets
        for b, row in enumerate(rows):
            at = 0
            for t in row:
                n = len(t)
                placed.append((b, at, t))
                ids[b, at : at + n] = torch.tensor(t.input_ids)
                lab = torch.tensor(t.labels)
                lab[0] = IGNORE  # never predict across an example boundary
                labels[b, at : at + n] = lab
                pos[b, at : at + n] = torch.arange(n)
                at += n
            real += at
            if at < width:
                pos[b, at:] = torch.arange(width - at)
        self.tokens += real
        self.supervised += int((labels != IGNORE).sum())
        self.padded += ids.numel()
        # no attention mask and no KV cache: transformers then derives a block-diagonal causal mask from positions
        return {"input_ids": ids, "position_ids": pos, "labels": labels, "use_cache": False,
                **_kd_layout(placed, ids.shape)}


def _kd_layout(placed: list[tuple[int, int, Tokenized]], shape: Any) -> dict[str, Any]:
    """kd_ids / kd_logp tensors beside the labels when any example of the batch has top-k targets, else nothing."""
    if not any(t.kd is not None for _, _, t in placed):
        return {}
    from .kd import layout

    return layout(placed, (int(shape[0]), int(shape[1]))) or {}


class ListDataset:
    """A plain map-style dataset over a Python list (no `datasets` dependency, which GPU images may lack)."""

    def __init__(self, items: Sequence[Any]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


def build_dataset(tokenized: list[Tokenized], *, packing: bool, pack_length: int, pad_id: int, seed: int = 0):
    """(dataset, collator) for the Trainer: one example per item, or one packed row per item."""
    if packing:
        rows = pack_rows([len(t) for t in tokenized], pack_length, seed)
        return ListDataset([[tokenized[i] for i in row] for row in rows]), PackedCollator(pad_id)
    return ListDataset(tokenized), PaddedCollator(pad_id)
