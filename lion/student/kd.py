"""Top-k distillation from the teacher's logprobs (`student.objective: topk_kd`): alignment, targets, loss.

    from lion.student.kd import TokenAligner, topk_kd_loss      # used by lion.student.data / train / score

The teacher's API returned, for every answer token, its top-K alternatives with their logprobs
(lion.teachers.logprobs). The student learns from them with a sparse forward KL per answer token:

    KL(p || q) = sum_k p_k (log p_k - log q_k) + p_tail (log p_tail - log q_tail)

over the K alternatives (mapped to student token ids) plus one tail bucket holding the remaining mass
(p_tail = 1 - sum_k p_k; q_tail = the student's mass outside those K ids, computed exactly from its logits), mixed
with the usual cross-entropy on the token the teacher wrote: per answer token with teacher targets
`kd_weight * KL + (1 - kd_weight) * CE`, the plain CE elsewhere (the EOS when the API does not report it, answers
without targets), summed and divided by the supervised tokens like the SFT loss (so packing, gradient accumulation
and several processes weigh tokens as they do for SFT).

Same tokenizer only, checked per answer (`TokenAligner.align`): the student's tokenisation of the stored answer must
reproduce the teacher's token sequence, token by token (equal bytes, or the same text as `tokenizer.decode([id])`,
which is how vLLM names tokens, or vLLM's `token_id:N`); an answer that does not is trained with SFT only and
counted (`kd.mismatched`). Alternatives the student's vocabulary cannot name go to the tail (counted). A teacher
whose tokenizer differs from the student's (an OpenAI model and a Qwen student) fails that check on (nearly) every
answer: training stops when fewer than `student.kd_min_match` of the answers align, and config check refuses
OpenAI's own API as a topk_kd teacher outright. lion does not align two vocabularies (TRL's GOLD / ULD does, from the
teacher's full distribution at every position; an API's top-20 is not enough for it): docs/student.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..teachers.logprobs import TokenLogprobs

IGNORE = -100


# --------------------------------------------------------------------------------------------- vocabulary


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet (bytes_to_unicode) inverted: the unicode character -> the byte it stands for."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    try:
        dec = json.loads(backend.to_str()).get("decoder") or {}
    except (ValueError, AttributeError):
        return False
    parts = dec.get("decoders", [dec]) if dec.get("type") == "Sequence" else [dec]
    return any(isinstance(p, dict) and p.get("type") == "ByteLevel" for p in parts)


class Vocab:
    """The student's tokens as the teacher's API would name them: exact bytes (byte-level BPE tokenizers), and the
    text of `decode([id])` (what vLLM / SGLang send as `token`). Built once per training (~1 s for 50k tokens)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        n = len(tokenizer)
        self.size = n
        self.text: list[str] = [tokenizer.decode([i]) for i in range(n)]
        self.exact: list[bytes | None] = [None] * n
        if _is_byte_level(tokenizer):
            dec = _byte_decoder()
            for i, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(n)))):
                if piece is not None and all(ch in dec for ch in piece):
                    self.exact[i] = bytes(dec[ch] for ch in piece)
        specials = set(getattr(tokenizer, "all_special_ids", []) or [])
        by_bytes: dict[bytes, int] = {}
        by_text: dict[str, int] = {}
        dup_text: set[str] = set()
        for i in range(n):
            b = self.exact[i] if i not in specials else None
            if b is not None and b not in by_bytes:
                by_bytes[b] = i
            t = self.text[i]
            if t in by_text and by_text[t] != i:
                dup_text.add(t)
            by_text.setdefault(t, i)
        self.by_bytes = by_bytes
        self.by_text = {t: i for t, i in by_text.items() if t not in dup_text and "\ufffd" not in t}

    def matches(self, token_id: int, teacher: bytes) -> bool:
        """Does the teacher's token name this student token?"""
        tid = TokenLogprobs.token_id(teacher)
        if tid is not None:
            return tid == token_id
        if self.exact[token_id] is not None and self.exact[token_id] == teacher:
            return True
        return teacher.decode("utf-8", errors="replace") == self.text[token_id]

    def lookup(self, teacher: bytes) -> int | None:
        """The student token a teacher alternative names, or None (its mass goes to the tail)."""
        tid = TokenLogprobs.token_id(teacher)
        if tid is not None:
            return tid if 0 <= tid < self.size else None
        hit = self.by_bytes.get(teacher)
        if hit is not None:
            return hit
        return self.by_text.get(teacher.decode("utf-8", errors="replace"))


# --------------------------------------------------------------------------------------------- per answer


@dataclass
class KDTargets:
    """The teacher's top-k at the answer tokens of one example: row j is the target for token `start + j` of the
    example's input_ids (ids -1 / logprob 0 where the teacher gave nothing there)."""

    start: int
    ids: Any  # numpy int32 [n, K]
    logp: Any  # numpy float32 [n, K]

    @property
    def k(self) -> int:
        return int(self.ids.shape[1]) if self.ids.ndim == 2 else 0


@dataclass
class KDStats:
    with_targets: int = 0  # answers trained with top-k targets
    mismatched: int = 0  # the student's tokenizer does not reproduce the teacher's tokens: SFT only
    without_logprobs: int = 0  # the answer has no logprobs (bought before top_logprobs was on, or seeded)
    target_tokens: int = 0  # answer tokens with a top-k target
    alternatives: int = 0  # teacher alternatives seen at those tokens
    unmapped: int = 0  # ... that no student token names (their mass went to the tail)
    examples: list[str] = field(default_factory=list)  # a few mismatched answers, for the error message

    def to_json(self) -> dict[str, Any]:
        seen = self.with_targets + self.mismatched
        return {"with_targets": self.with_targets, "mismatched": self.mismatched,
                "without_logprobs": self.without_logprobs, "target_tokens": self.target_tokens,
                "match_share": round(self.with_targets / seen, 4) if seen else None,
                "unmapped_share": round(self.unmapped / self.alternatives, 4) if self.alternatives else None}


class TokenAligner:
    """Checks each answer against the teacher's tokens and builds its `KDTargets` (see the module docstring)."""

    def __init__(self, tokenizer: Any, top_k: int = 0) -> None:
        self.vocab = Vocab(tokenizer)
        self.eos = tokenizer.eos_token_id
        self.top_k = top_k
        self.stats = KDStats()

    def align(self, response_ids: Sequence[int], start: int, blob: bytes | None, where: str = "") -> KDTargets | None:
        """Targets for the answer tokens `response_ids` (the student's tokenisation of the stored answer, then EOS
        unless cut at max_length), which begin at `start` in the example's input_ids; None (SFT only, counted)
        when there are no logprobs or the teacher's tokens are not reproduced."""
        import numpy as np

        if blob is None:
            self.stats.without_logprobs += 1
            return None
        lp = TokenLogprobs.decode(blob)
        if self.top_k:
            lp = lp.truncate(self.top_k)
        teacher = list(range(len(lp)))
        # the answer is stored stripped: whitespace-only tokens at either end are not part of it
        while teacher and not lp.tokens[teacher[0]].strip():
            teacher.pop(0)
        ids = list(response_ids)
        has_eos = bool(ids) and ids[-1] == self.eos
        body = ids[:-1] if has_eos else ids
        eos_entry = None
        if teacher and len(teacher) > len(body) and self.vocab.matches(self.eos, lp.tokens[teacher[-1]]):
            eos_entry = teacher.pop()  # the stop token, reported by vLLM-style servers (OpenAI does not)
        while len(teacher) > len(body) and not lp.tokens[teacher[-1]].strip():
            teacher.pop()
        # a response cut at max_length (no EOS) is a prefix of the answer; a whole one has exactly its tokens
        ok = (len(teacher) == len(body) or (not has_eos and len(teacher) > len(body))) and all(
            self.vocab.matches(s, lp.tokens[t]) for s, t in zip(body, teacher, strict=False))
        if not ok:
            self.stats.mismatched += 1
            if len(self.stats.examples) < 3 and where:
                self.stats.examples.append(where)
            return None
        k = max(lp.k, 1)
        out_ids = np.full((len(ids), k), -1, dtype=np.int32)
        out_lp = np.zeros((len(ids), k), dtype=np.float32)
        rows = [(j, teacher[j]) for j in range(len(body))]
        if has_eos and eos_entry is not None:
            rows.append((len(body), eos_entry))
        for j, t in rows:
            col = 0
            seen: set[int] = set()
            for tb, v in lp.top[t]:
                self.stats.alternatives += 1
                sid = self.vocab.lookup(tb)
                if sid is None or sid in seen:
                    self.stats.unmapped += sid is None
                    continue
                seen.add(sid)
                out_ids[j, col], out_lp[j, col] = sid, v
                col += 1
            if col:
                self.stats.target_tokens += 1
        self.stats.with_targets += 1
        return KDTargets(start, out_ids, out_lp)


# --------------------------------------------------------------------------------------------- batches and loss


def layout(items: Sequence[tuple[int, int, Any]], shape: tuple[int, int]) -> dict[str, Any] | None:
    """`kd_ids` [B, W, K] (-1 = none) and `kd_logp` [B, W, K] for a batch: items are (row, column where the
    example starts in that row, its Tokenized). None when no example of the batch has targets."""
    import torch

    placed = [(b, at, t.kd) for b, at, t in items if getattr(t, "kd", None) is not None]
    if not placed:
        return None
    k = max(kd.k for _, _, kd in placed)
    ids = torch.full((*shape, k), -1, dtype=torch.long)
    logp = torch.zeros((*shape, k), dtype=torch.float32)
    for b, at, kd in placed:
        n = kd.ids.shape[0]
        lo = at + kd.start
        ids[b, lo:lo + n, :kd.k] = torch.from_numpy(kd.ids).long()
        logp[b, lo:lo + n, :kd.k] = torch.from_numpy(kd.logp)
    return {"kd_ids": ids, "kd_logp": logp}


def topk_kd_loss(logits: Any, labels: Any, kd_ids: Any, kd_logp: Any, weight: float) -> tuple[Any, Any]:
    """(sum over supervised tokens of the per-token loss, number of supervised tokens), causal shift included:
    position t predicts token t + 1. Per token with targets: weight * KL(top-k + tail) + (1 - weight) * CE;
    without: CE."""
    import torch

    shift_labels = labels[:, 1:]
    keep = shift_labels != IGNORE
    if not bool(keep.any()):
        return logits.sum() * 0.0, keep.sum()
    lg = logits[:, :-1][keep].float()  # [N, V]
    target = shift_labels[keep]
    ids = kd_ids[:, 1:][keep]  # [N, K]
    tlp = kd_logp[:, 1:][keep]
    logz = torch.logsumexp(lg, dim=-1)
    ce = logz - lg.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    valid = ids >= 0
    has = valid.any(-1)
    if not bool(has.any()) or weight == 0.0:
        return ce.sum(), keep.sum()
    safe = ids.clamp(min=0)
    q_log = lg.gather(-1, safe) - logz.unsqueeze(-1)  # student log q at the teacher's ids
    # the student's mass outside the K ids, exactly: logsumexp of the logits with those ids masked out. The mask is
    # one byte per vocabulary entry; a padding entry writes True at its row's first id (True anyway), or False at id
    # 0 in a row without targets, so no two writes to one place disagree.
    first = safe.gather(-1, valid.int().argmax(-1, keepdim=True)).expand_as(safe)
    hit = torch.zeros(lg.shape, dtype=torch.bool, device=lg.device).scatter_(
        -1, torch.where(valid, safe, first), has.unsqueeze(-1).expand_as(valid))
    q_tail_log = (torch.logsumexp(lg.masked_fill(hit, float("-inf")), dim=-1) - logz).clamp(min=-1e4)
    p = torch.where(valid, tlp.exp(), torch.zeros_like(tlp))
    p_tail = (1.0 - p.sum(-1)).clamp(min=0.0)
    kl_top = torch.where(valid & (p > 0), p * (tlp - q_log), torch.zeros_like(p)).sum(-1)
    kl_tail = torch.where(p_tail > 0, p_tail * (torch.log(p_tail.clamp(min=1e-30)) - q_tail_log),
                          torch.zeros_like(p_tail))
    kl = kl_top + kl_tail
    per_token = torch.where(has, weight * kl + (1.0 - weight) * ce, ce)
    return per_token.sum(), keep.sum()


def kd_trainer(base: type, weight: float) -> type:
    """A Trainer subclass whose loss is `topk_kd_loss` on batches that carry kd_ids / kd_logp (normalised by the
    Trainer's num_items_in_batch, so gradient accumulation and several processes weigh tokens as for SFT)."""

    class KDTrainer(base):  # type: ignore[misc, valid-type]
        loss_is_scaled_for_ga = True

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            kd_ids, kd_logp = inputs.pop("kd_ids", None), inputs.pop("kd_logp", None)
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            if kd_ids is None:
                kd_ids = labels.new_full((*labels.shape, 1), -1)
                kd_logp = labels.new_zeros((*labels.shape, 1), dtype=outputs.logits.dtype)
            total, n = topk_kd_loss(outputs.logits, labels, kd_ids.to(labels.device), kd_logp.to(labels.device),
                                    weight)
            if num_items_in_batch is None:
                loss = total / n.clamp(min=1)
                loss = loss / self.current_gradient_accumulation_steps
            else:
                loss = total / num_items_in_batch
                if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                    loss = loss * self.accelerator.num_processes  # DDP averages the gradients of the processes
            return (loss, outputs) if return_outputs else loss

    return KDTrainer
