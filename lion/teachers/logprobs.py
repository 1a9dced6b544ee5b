"""A teacher answer's per-token log-probabilities, as the APIs return them, and their compact form on disk.

    from lion.teachers.logprobs import TokenLogprobs
    lp = TokenLogprobs.from_openai(choice.logprobs.content)   # chat completions: logprobs: true, top_logprobs: K
    blob = lp.encode(); TokenLogprobs.decode(blob) == lp     # what the call cache and the answer store keep
    lp.truncate(5)                                           # the top 5 of the top 20 (same paid call)

One entry per generated token: the token (its bytes: OpenAI's `bytes`, else the UTF-8 of `token`), the logprob of
the token that was generated, and the teacher's `top_logprobs` alternatives at that position, sorted by logprob
(highest first, duplicates dropped: vLLM lists the sampled token first even when it is not among the top K).
A server asked with `return_tokens_as_token_ids` names tokens `token_id:N`; they are kept as those bytes.

The encoded form (`encode`, format 1): zlib over a small header (magic, K, counts), a table of the distinct token
byte strings of the answer, then per token the index of the generated token and of each alternative (uint16, or
uint32 when an answer has 65,536 distinct strings or more) and their logprobs as float16 (~3 significant digits;
vLLM's floor of -9999 fits). A missing alternative (fewer than K returned) is index 0xFFFF... with logprob -inf.
Measured bytes per answer token: `python bench/topk_kd.py` reports them.
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

MAGIC = b"LPK1"
MAX_TOP = 20  # OpenAI's limit (top_logprobs: 0..20); vLLM's default max_logprobs is 20 too
_TOKEN_ID = re.compile(rb"^token_id:(\d+)$")


def _get(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _token_bytes(entry: Any) -> bytes:
    raw = _get(entry, "bytes")
    if isinstance(raw, (list, tuple)) and all(isinstance(b, int) and 0 <= b < 256 for b in raw):
        return bytes(raw)
    token = _get(entry, "token")
    if not isinstance(token, str):
        raise ValueError("a logprobs entry has neither bytes nor a token string")
    return token.encode("utf-8", errors="replace")


def _logprob(entry: Any) -> float:
    lp = _get(entry, "logprob")
    if isinstance(lp, bool) or not isinstance(lp, (int, float)) or math.isnan(lp):
        raise ValueError(f"a logprobs entry has no numeric logprob ({lp!r})")
    return float(lp)


@dataclass
class TokenLogprobs:
    """The generated tokens of one answer with the teacher's logprobs (see the module docstring)."""

    tokens: list[bytes]
    logprobs: list[float]  # of the generated token
    top: list[list[tuple[bytes, float]]] = field(default_factory=list)  # per token, highest first

    def __post_init__(self) -> None:
        if len(self.logprobs) != len(self.tokens) or (self.top and len(self.top) != len(self.tokens)):
            raise ValueError("tokens, logprobs and top must have one entry per generated token")
        if not self.top:
            self.top = [[] for _ in self.tokens]

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def k(self) -> int:
        """Alternatives per position (the most any position has)."""
        return max((len(t) for t in self.top), default=0)

    def text(self) -> str:
        return b"".join(self.tokens).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ from the wire
    @classmethod
    def from_openai(cls, content: Iterable[Any]) -> TokenLogprobs:
        """Chat completions' `choices[i].logprobs.content` (dicts or the SDK's objects)."""
        tokens, lps, top = [], [], []
        for entry in content:
            tokens.append(_token_bytes(entry))
            lps.append(_logprob(entry))
            alts: dict[bytes, float] = {}
            for alt in _get(entry, "top_logprobs") or []:
                tb, lp = _token_bytes(alt), _logprob(alt)
                if tb not in alts or lp > alts[tb]:
                    alts[tb] = lp
            top.append(sorted(alts.items(), key=lambda x: -x[1]))
        return cls(tokens, lps, top)

    @classmethod
    def from_completions(cls, logprobs: Any) -> TokenLogprobs:
        """/v1/completions' legacy `choices[i].logprobs`: tokens, token_logprobs, top_logprobs ([{token: lp}])."""
        toks, lps = _get(logprobs, "tokens") or [], _get(logprobs, "token_logprobs") or []
        tops = _get(logprobs, "top_logprobs") or [None] * len(toks)
        if len(toks) != len(lps) or len(tops) != len(toks):
            raise ValueError("completions logprobs: tokens, token_logprobs and top_logprobs differ in length")
        top = [sorted(((str(t).encode("utf-8", errors="replace"), float(lp)) for t, lp in (d or {}).items()),
                      key=lambda x: -x[1]) for d in tops]
        return cls([str(t).encode("utf-8", errors="replace") for t in toks],
                   [float(lp) if lp is not None else -math.inf for lp in lps], top)

    def to_openai(self) -> list[dict[str, Any]]:
        """Back to chat completions' `logprobs.content` shape (what the sim server sends)."""
        def one(tb: bytes, lp: float) -> dict[str, Any]:
            return {"token": tb.decode("utf-8", errors="replace"), "logprob": lp, "bytes": list(tb)}

        return [{**one(t, lp), "top_logprobs": [one(a, b) for a, b in alts]}
                for t, lp, alts in zip(self.tokens, self.logprobs, self.top, strict=True)]

    # ------------------------------------------------------------------ views
    def truncate(self, k: int) -> TokenLogprobs:
        """The same answer with only the top `k` alternatives per position (K=5 out of the K=20 bought)."""
        return TokenLogprobs(list(self.tokens), list(self.logprobs), [list(t[:k]) for t in self.top])

    @staticmethod
    def token_id(token: bytes) -> int | None:
        """N for a token a server returned as `token_id:N` (vLLM's return_tokens_as_token_ids), else None."""
        m = _TOKEN_ID.match(token)
        return int(m.group(1)) if m else None

    # ------------------------------------------------------------------ on disk
    def encode(self) -> bytes:
        table: dict[bytes, int] = {}

        def ix(tb: bytes) -> int:
            if tb not in table:
                table[tb] = len(table)
            return table[tb]

        k = self.k
        n = len(self.tokens)
        idx, vals = [], []
        for t, lp, alts in zip(self.tokens, self.logprobs, self.top, strict=True):
            idx.append(ix(t))
            vals.append(lp)
            for j in range(k):
                if j < len(alts):
                    idx.append(ix(alts[j][0]))
                    vals.append(alts[j][1])
                else:
                    idx.append(-1)
                    vals.append(-math.inf)
        wide = len(table) >= 0xFFFF
        missing = 0xFFFFFFFF if wide else 0xFFFF
        out = bytearray(MAGIC)
        out += struct.pack("<BBII", k, 1 if wide else 0, n, len(table))
        for tb in table:
            if len(tb) > 0xFFFF:
                raise ValueError("a token longer than 65,535 bytes")
            out += struct.pack("<H", len(tb)) + tb
        out += struct.pack(f"<{len(idx)}{'I' if wide else 'H'}", *(missing if i < 0 else i for i in idx))
        out += struct.pack(f"<{len(vals)}e", *(max(v, -65504.0) if v != -math.inf else -math.inf for v in vals))
        return zlib.compress(bytes(out), 6)

    @classmethod
    def decode(cls, blob: bytes) -> TokenLogprobs:
        try:
            raw = zlib.decompress(blob)
        except zlib.error as e:
            raise ValueError(f"not a logprobs record ({e})") from None
        if raw[:4] != MAGIC:
            raise ValueError("not a logprobs record (bad magic)")
        k, wide, n, n_table = struct.unpack_from("<BBII", raw, 4)
        at = 4 + struct.calcsize("<BBII")
        table = []
        for _ in range(n_table):
            (length,) = struct.unpack_from("<H", raw, at)
            at += 2
            table.append(raw[at:at + length])
            at += length
        per = n * (1 + k)
        fmt = "I" if wide else "H"
        idx = struct.unpack_from(f"<{per}{fmt}", raw, at)
        at += per * struct.calcsize(fmt)
        vals = struct.unpack_from(f"<{per}e", raw, at)
        missing = 0xFFFFFFFF if wide else 0xFFFF
        tokens, lps, top = [], [], []
        for i in range(n):
            row = i * (1 + k)
            tokens.append(table[idx[row]])
            lps.append(float(vals[row]))
            top.append([(table[idx[row + 1 + j]], float(vals[row + 1 + j])) for j in range(k)
                        if idx[row + 1 + j] != missing])
        return cls(tokens, lps, top)


def truncate_blob(blob: bytes | None, k: int) -> bytes | None:
    """An encoded record with only the top `k` alternatives per position."""
    return None if blob is None else TokenLogprobs.decode(blob).truncate(k).encode()


def sequence_bytes(tokens: Sequence[bytes]) -> bytes:
    return b"".join(tokens)
