"""Student training data: prompt format, tokenisation with prompt-loss masking, padding and packing.

    from lion.student.data import format_prompt, tokenize_examples, PaddedCollator, PackedCollator, pack_rows
    from lion.student.data import BatchLayout, build_rows, make_collator, flattens_packed_rows

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
  block-diagonal causal mask (sdpa, eager). FlashAttention separates examples only within one row, so under it
  each micro-batch is flattened into a single row with the varlen boundaries (``cu_seq_lens_*``,
  ``max_length_*``): examples never attend to each other under either. `BatchLayout` is the one place a
  micro-batch is laid out (padded, packed or flattened).
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


def flattens_packed_rows(attn_implementation: str | None) -> bool:
    """True for the attention kernels that keep packed examples apart only in one flattened row.

    transformers (5.x) builds the per-example (block-diagonal) mask from restarting position ids at any batch size
    for sdpa, eager and flex attention (``masking_utils.find_packed_sequence_indices``). FlashAttention takes no
    mask: ``modeling_flash_attention_utils._flash_attention_forward`` uses its varlen kernel when it is given
    ``cu_seq_lens_q/k`` and ``max_length_q/k``, or when ``_is_packed_sequence`` detects restarting position ids,
    which it does only at batch size 1; a [B > 1, L] packed batch runs one causal attention over each whole row.
    The names follow transformers' own rule (``is_flash_attention_requested``: "flash" in the name)."""
    return bool(attn_implementation) and "flash" in str(attn_implementation)


@dataclass(frozen=True)
class Span:
    """One example's place in a micro-batch: `length` tokens of row `row` from `start`."""

    row: int
    start: int
    length: int


@dataclass
class BatchLayout:
    """Where the examples of one micro-batch sit: `rows` x `width` token slots, example k at `spans[k]`.

    The one place a micro-batch is laid out: every per-token field (input ids, labels, and any a new objective
    adds, e.g. a teacher's top-k ids and log-probabilities of shape [tokens, k]) is placed with `place`, so all of
    them line up with the positions, the attention mask and the sequence boundaries.
    """

    rows: int
    width: int
    spans: list[Span]

    @classmethod
    def padded(cls, lengths: Sequence[int], multiple: int | None = None) -> BatchLayout:
        """One example per row, right-padded to the longest (rounded up to `multiple`)."""
        width = max(lengths)
        if multiple:
            width = -(-width // multiple) * multiple
        return cls(len(lengths), width, [Span(b, 0, n) for b, n in enumerate(lengths)])

    @classmethod
    def packed(cls, rows: Sequence[Sequence[int]]) -> BatchLayout:
        """Rows of examples (their lengths) one after another, rows right-padded to the longest row."""
        spans, width = [], 0
        for b, row in enumerate(rows):
            at = 0
            for n in row:
                spans.append(Span(b, at, n))
                at += n
            width = max(width, at)
        return cls(len(rows), width, spans)

    @classmethod
    def flat(cls, lengths: Sequence[int]) -> BatchLayout:
        """Every example of the micro-batch one after another in a single row, no padding."""
        spans, at = [], 0
        for n in lengths:
            spans.append(Span(0, at, n))
            at += n
        return cls(1, at, spans)

    def place(self, values: Sequence[Any], fill: int | float, dtype: Any = None):
        """A [rows, width, *rest] tensor: example k's per-token `values[k]` ([length, *rest]) at its span, `fill`
        in every other slot."""
        import torch

        first = torch.as_tensor(values[0], dtype=dtype)
        out = torch.full((self.rows, self.width, *first.shape[1:]), fill, dtype=first.dtype)
        for s, v in zip(self.spans, values, strict=True):
            out[s.row, s.start : s.start + s.length] = torch.as_tensor(v, dtype=first.dtype)
        return out

    def attention_mask(self):
        """1 on the examples' tokens, 0 on padding."""
        return self.place([[1] * s.length for s in self.spans], 0, None)

    def position_ids(self):
        """Positions restarting at 0 for each example; a row's padding tail is a segment of its own (from 0)."""
        import torch

        pos = self.place([range(s.length) for s in self.spans], 0, torch.long)
        used = [0] * self.rows
        for s in self.spans:
            used[s.row] = max(used[s.row], s.start + s.length)
        for b, at in enumerate(used):
            if at < self.width:
                pos[b, at:] = torch.arange(self.width - at)
        return pos

    def varlen_kwargs(self) -> dict[str, Any]:
        """FlashAttention's varlen arguments for a single-row layout (what transformers would otherwise infer from
        the position ids in every layer, with a device sync each time): cumulative example boundaries, longest."""
        import torch

        if self.rows != 1:
            raise ValueError("varlen kwargs describe one flattened row")
        cu = [0]
        for s in self.spans:
            cu.append(cu[-1] + s.length)
        cu_t = torch.tensor(cu, dtype=torch.int32)
        longest = max(s.length for s in self.spans)
        return {"cu_seq_lens_q": cu_t, "cu_seq_lens_k": cu_t, "max_length_q": longest, "max_length_k": longest}


class _Collator:
    """Lays out a micro-batch (`BatchLayout`) and counts the real (non-pad) and supervised tokens it has produced
    (for throughput metrics)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id
        self.tokens = 0
        self.supervised = 0
        self.padded = 0  # token slots including padding

    def _fields(self, lay: BatchLayout, examples: Sequence[Tokenized]) -> dict[str, Any]:
        """input_ids and labels of `examples` placed by `lay`. The first label of each example is -100: in a
        packed row it would be predicted from the previous example's last token (and in a padded row it is never
        a target anyway)."""
        import torch

        ids = lay.place([t.input_ids for t in examples], self.pad_id, torch.long)
        labels = lay.place([[IGNORE, *t.labels[1:]] for t in examples], IGNORE, torch.long)
        self.tokens += sum(s.length for s in lay.spans)
        self.supervised += int((labels != IGNORE).sum())
        self.padded += ids.numel()
        # the teacher's top-k targets (objective topk_kd), at the same positions as the labels
        kd = _kd_layout([(sp.row, sp.start, t) for sp, t in zip(lay.spans, examples, strict=True)], ids.shape)
        return {"input_ids": ids, "labels": labels, **kd}


class PaddedCollator(_Collator):
    """Items are `Tokenized`; right-pads to the longest in the batch, with an attention mask."""

    def __init__(self, pad_id: int, pad_to_multiple_of: int | None = None) -> None:
        super().__init__(pad_id)
        self.multiple = pad_to_multiple_of

    def __call__(self, items: list[Tokenized]) -> dict[str, Any]:
        lay = BatchLayout.padded([len(t) for t in items], self.multiple)
        return {**self._fields(lay, items), "attention_mask": lay.attention_mask()}


class PackedCollator(_Collator):
    """Items are rows (lists of `Tokenized`); each example's position ids restart at 0, no attention mask.

    ``flatten=False`` (sdpa, eager): a [rows, longest row] batch, rows right-padded; the padding forms its own
    segment (positions from 0, labels -100), so it neither sees nor is seen by the real examples, and transformers
    builds the block-diagonal causal mask of each row from the position ids.
    ``flatten=True`` (FlashAttention, see `flattens_packed_rows`): the micro-batch's rows are concatenated into
    one [1, tokens] row without padding, with the varlen arguments (``cu_seq_lens_q/k``, ``max_length_q/k``) so
    FlashAttention runs each example on its own. (sdpa is never flattened: it would build one explicit
    [tokens x tokens] mask, quadratic in the micro-batch's tokens.)
    """

    def __init__(self, pad_id: int, *, flatten: bool = False) -> None:
        super().__init__(pad_id)
        self.flatten = flatten

    def __call__(self, rows: list[list[Tokenized]]) -> dict[str, Any]:
        examples = [t for row in rows for t in row]
        if self.flatten:
            lay = BatchLayout.flat([len(t) for t in examples])
        else:
            lay = BatchLayout.packed([[len(t) for t in row] for row in rows])
        batch = {**self._fields(lay, examples), "position_ids": lay.position_ids()}
        if self.flatten:
            batch.update(lay.varlen_kwargs())
        # no attention mask and no KV cache: transformers then derives a block-diagonal causal mask from positions
        batch["use_cache"] = False
        return batch


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


def build_rows(tokenized: list[Tokenized], *, packing: bool, pack_length: int, seed: int = 0) -> ListDataset:
    """The Trainer's dataset: one example per item, or one packed row (a list of examples) per item."""
    if packing:
        rows = pack_rows([len(t) for t in tokenized], pack_length, seed)
        return ListDataset([[tokenized[i] for i in row] for row in rows])
    return ListDataset(tokenized)


def make_collator(*, packing: bool, pad_id: int, attn_implementation: str | None = None) -> _Collator:
    """The collator for `build_rows`'s items; with packing under FlashAttention (`attn_implementation`, the one
    the model runs) each micro-batch is flattened into one row."""
    if packing:
        return PackedCollator(pad_id, flatten=flattens_packed_rows(attn_implementation))
    return PaddedCollator(pad_id)


def build_dataset(tokenized: list[Tokenized], *, packing: bool, pack_length: int, pad_id: int, seed: int = 0,
                  attn_implementation: str | None = None) -> tuple[ListDataset, _Collator]:
    """(dataset, collator) for the Trainer: `build_rows` and `make_collator`."""
    return (build_rows(tokenized, packing=packing, pack_length=pack_length, seed=seed),
            make_collator(packing=packing, pad_id=pad_id, attn_implementation=attn_implementation))
