"""Packed training batches keep examples apart under every attention implementation (sdpa, eager, FlashAttention).

    python -m pytest -q tests/test_student_packing.py

transformers (5.x) separates packed examples from restarting position ids at any batch size for sdpa/eager (it
builds the block-diagonal mask), but for FlashAttention only at batch size 1 (`_is_packed_sequence`), or when
given `cu_seq_lens_*` / `max_length_*`. So under FlashAttention lion flattens each packed micro-batch into one row
with those varlen arguments. FlashAttention itself needs CUDA; here transformers' own FlashAttention code path
(`_flash_attention_forward`: the choice between the plain causal kernel and the varlen kernel) runs with two
reference kernels written in PyTorch in their place. bench/gpu_check.py checks the real kernel on a GPU.
"""

from __future__ import annotations

import pytest

from lion.student.data import IGNORE, BatchLayout, PackedCollator, PaddedCollator, build_dataset, tokenize_examples

WORDS = ["ab", "hello there", "x", "packing works", "four", "a longer example here"]


def _tokd(path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    rows = [{"instruction": w, "output": w[::-1] * 2} for w in WORDS]
    tokd, _ = tokenize_examples(tok, rows, max_length=128)
    return tok, tokd


def _model(path, attn: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn).eval()


def _packed_batch(tokd, pad_id, attn: str):
    """The first micro-batch of two packed rows, as lion's training collates it for `attn`."""
    dataset, collator = build_dataset(tokd, packing=True, pack_length=160, pad_id=pad_id, seed=0,
                                      attn_implementation=attn)
    rows = sorted((dataset[i] for i in range(len(dataset))), key=len, reverse=True)[:2]
    assert len(rows[0]) > 1  # a row really packs several examples
    return rows, collator(rows)


@pytest.mark.parametrize("attn", ["sdpa", "eager", "flash_attention_2"])
def test_collator_layout_per_attention_and_transformers_sees_separate_sequences(tiny_char_base, attn) -> None:
    from transformers.modeling_flash_attention_utils import _is_packed_sequence, prepare_fa_kwargs_from_position_ids

    tok, tokd = _tokd(tiny_char_base)
    rows, batch = _packed_batch(tokd, tok.pad_token_id, attn)
    examples = [t for row in rows for t in row]
    lengths = [len(t) for t in examples]
    ids, pos = batch["input_ids"], batch["position_ids"]
    assert "attention_mask" not in batch and batch["use_cache"] is False
    if attn == "flash_attention_2":
        # one row, no padding; each example's positions restart at 0; the varlen boundaries are the examples'
        assert ids.shape == (1, sum(lengths)) and pos.shape == ids.shape
        assert ids[0].tolist() == [i for t in examples for i in t.input_ids]
        assert pos[0].tolist() == [p for n in lengths for p in range(n)]
        cu = [0]
        for n in lengths:
            cu.append(cu[-1] + n)
        assert batch["cu_seq_lens_q"].tolist() == cu and batch["cu_seq_lens_k"].tolist() == cu
        assert batch["max_length_q"] == batch["max_length_k"] == max(lengths)
        # transformers' own packed-sequence detection sees separate sequences, with the same boundaries
        assert bool(_is_packed_sequence(pos, batch_size=ids.shape[0]))
        (cu_q, _), (longest, _) = prepare_fa_kwargs_from_position_ids(pos)
        assert cu_q.tolist() == cu and int(longest) == max(lengths)
        assert int((batch["labels"] != IGNORE).sum()) == sum(
            sum(lab != IGNORE for lab in t.labels[1:]) for t in examples)
    else:
        # sdpa/eager: [rows, longest row]; transformers builds each row's block-diagonal mask from the positions
        assert ids.shape[0] == 2 and ids.shape[1] == max(sum(len(t) for t in row) for row in rows)
        assert not any(k in batch for k in ("cu_seq_lens_q", "max_length_q"))
        from transformers.masking_utils import find_packed_sequence_indices

        seg = find_packed_sequence_indices(pos)
        assert seg is not None and int(seg[0].max()) + 1 >= len(rows[0])
    # the layout lion used before (rows of a packed batch, no flattening) is not recognised by FlashAttention's
    # detection at batch size 2: transformers would run one causal attention over each whole row
    old = PackedCollator(tok.pad_token_id)(rows)
    assert old["input_ids"].shape[0] == 2
    assert not _is_packed_sequence(old["position_ids"], batch_size=2)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_flattened_and_row_batches_give_the_padded_loss_under_sdpa_and_eager(tiny_char_base, attn) -> None:
    import torch

    tok, tokd = _tokd(tiny_char_base)
    model = _model(tiny_char_base, attn)
    rows = [tokd[:3], tokd[3:]]
    padded = PaddedCollator(tok.pad_token_id)(tokd)
    as_rows = PackedCollator(tok.pad_token_id)(rows)
    flat = PackedCollator(tok.pad_token_id, flatten=True)(rows)
    assert flat["input_ids"].shape == (1, sum(len(t) for t in tokd))
    with torch.no_grad():
        ref = model(**padded)
        got_rows = model(**as_rows)
        flat_args = {k: v for k, v in flat.items() if not k.startswith(("cu_seq", "max_length"))}  # sdpa: positions
        got_flat = model(**flat_args)
    assert torch.allclose(ref.loss, got_rows.loss, atol=1e-5)
    assert torch.allclose(ref.loss, got_flat.loss, atol=1e-5)
    at = 0
    for b, t in enumerate(tokd):  # every example's logits, wherever it sits, equal its own unpacked logits
        n = len(t)
        assert torch.allclose(ref.logits[b, :n], got_flat.logits[0, at : at + n], atol=1e-5)
        at += n
    for key in ("tokens", "supervised"):  # the same real and supervised tokens; the flat batch has no padding
        c_rows, c_flat = PackedCollator(0), PackedCollator(0, flatten=True)
        c_rows(rows), c_flat(rows)
        assert getattr(c_rows, key) == getattr(c_flat, key)
    assert c_flat.padded == c_flat.tokens < c_rows.padded


class _ReferenceFlash:
    """FlashAttention's two entry points in PyTorch ([B, L, H, D] causal; varlen over [T, H, D] with cu_seqlens),
    counting which one transformers called."""

    def __init__(self) -> None:
        self.calls = {"plain": 0, "varlen": 0}

    @staticmethod
    def _attend(q, k, v, softmax_scale, causal):
        import torch.nn.functional as F

        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=causal, scale=softmax_scale, enable_gqa=True)
        return o.transpose(1, 2)

    def flash_attn_func(self, q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
        self.calls["plain"] += 1
        return self._attend(q, k, v, softmax_scale, causal)

    def flash_attn_varlen_func(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None,
                               dropout_p=0.0, softmax_scale=None, causal=False):
        import torch

        self.calls["varlen"] += 1
        assert cu_seqlens_q.tolist() == cu_seqlens_k.tolist()
        bounds = cu_seqlens_q.tolist()
        out = [self._attend(q[None, a:b], k[None, a:b], v[None, a:b], softmax_scale, causal)[0]
               for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        return torch.cat(out)


@pytest.fixture
def reference_flash(monkeypatch):
    """transformers' FlashAttention path with `_ReferenceFlash` as the loaded kernels."""
    import transformers.modeling_flash_attention_utils as fa

    ref = _ReferenceFlash()
    monkeypatch.setattr(fa, "_loaded_implementation", "flash_attention_2")
    monkeypatch.setattr(fa, "_flash_fn", ref.flash_attn_func)
    monkeypatch.setattr(fa, "_flash_varlen_fn", ref.flash_attn_varlen_func)
    monkeypatch.setattr(fa, "_flash_with_kvcache_fn", None)
    monkeypatch.setattr(fa, "_process_flash_kwargs_fn", fa._lazy_define_process_function(ref.flash_attn_varlen_func))
    monkeypatch.setattr(fa, "_process_with_kvcache_kwargs_fn", dict)
    return ref


def test_flash_attention_path_keeps_packed_examples_apart(tiny_char_base, reference_flash) -> None:
    """Under transformers' FlashAttention dispatch, lion's packed micro-batch gives the padded (sdpa) loss; the
    [2, L] packed batch lion built before runs the plain causal kernel across examples and gives another loss."""
    import torch

    tok, tokd = _tokd(tiny_char_base)
    model = _model(tiny_char_base, "sdpa")
    rows, batch = _packed_batch(tokd, tok.pad_token_id, "flash_attention_2")
    examples = [t for row in rows for t in row]
    with torch.no_grad():
        ref = model(**PaddedCollator(tok.pad_token_id)(examples)).loss
        model.config._attn_implementation = "flash_attention_2"
        got = model(**batch).loss
        assert reference_flash.calls["varlen"] > 0 and reference_flash.calls["plain"] == 0
        old = model(**PackedCollator(tok.pad_token_id)(rows)).loss
        assert reference_flash.calls["plain"] > 0  # the old [2, L] batch: one causal attention per whole row
    assert torch.allclose(ref, got, atol=1e-5)
    assert not torch.allclose(ref, old, atol=1e-3)


def test_training_collates_for_the_attention_the_model_runs(tmp_path, tiny_char_base, monkeypatch,
                                                            reference_flash) -> None:
    """train_student picks the collator from the loaded model's attention: rows under sdpa; under FlashAttention
    (transformers' path with the reference kernels) flattened micro-batches that reach the varlen kernel through
    the Trainer, with the same losses as the sdpa training."""
    from conftest import student_fact_examples

    import lion.student.train as train_mod
    from lion.config import StudentConfig

    flattened: list[bool] = []
    real_collator, real_prepare = train_mod.counting_collator, train_mod._prepare_model
    monkeypatch.setattr(train_mod, "counting_collator",
                        lambda c: flattened.append(getattr(c, "flatten", None)) or real_collator(c))
    cfg = StudentConfig(model=str(tiny_char_base), lr=3e-3, per_device_batch_size=3, grad_accum=1, max_steps=4,
                        warmup_ratio=0.0, max_length=64, packing=True, pack_length=128, attn_implementation="sdpa",
                        logging_steps=1, save_minutes=0, lr_scheduler="constant")
    examples = student_fact_examples(4)
    sdpa = train_mod.train_student(cfg, examples, tiny_char_base, tmp_path / "sdpa", progress=False).metrics
    assert flattened == [False] and reference_flash.calls == {"plain": 0, "varlen": 0}

    def as_flash(*a, **kw):  # the model loaded, then switched to FlashAttention (needs CUDA to load it so)
        model, info = real_prepare(*a, **kw)
        model.config._attn_implementation = "flash_attention_2"
        return model, info

    monkeypatch.setattr(train_mod, "_prepare_model", as_flash)
    flash = train_mod.train_student(cfg, examples, tiny_char_base, tmp_path / "flash", progress=False).metrics
    assert flattened == [False, True]
    assert reference_flash.calls["varlen"] > 0 and reference_flash.calls["plain"] == 0
    assert flash["steps"] == sdpa["steps"] == 4 and flash["tokens"] == sdpa["tokens"]
    assert flash["padded_tokens"] == flash["tokens"] < sdpa["padded_tokens"]  # flattened: no padding at all
    assert flash["losses"] == pytest.approx(sdpa["losses"], rel=1e-4)


def test_batch_layout_places_per_token_fields_with_extra_dims() -> None:
    """A new objective's per-token field (e.g. teacher top-k ids, [tokens, k]) lines up with the input ids."""
    import torch

    lay = BatchLayout.packed([[2, 3], [1]])
    assert (lay.rows, lay.width) == (2, 5)
    topk = lay.place([torch.full((2, 4), 1), torch.full((3, 4), 2), torch.full((1, 4), 3)], -1, torch.long)
    assert topk.shape == (2, 5, 4)
    assert topk[0, :, 0].tolist() == [1, 1, 2, 2, 2] and topk[1, :, 0].tolist() == [3, -1, -1, -1, -1]
    assert lay.position_ids().tolist() == [[0, 1, 0, 1, 2], [0, 0, 1, 2, 3]]
    flat = BatchLayout.flat([2, 3, 1])
    assert flat.varlen_kwargs()["cu_seq_lens_q"].tolist() == [0, 2, 5, 6]
    assert BatchLayout.padded([3, 1], multiple=4).attention_mask().tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
