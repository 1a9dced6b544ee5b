"""What a student training optimises: supervised fine-tuning (the default), or a preference loss on answer pairs.

    from lion.student.objectives import SFT, Preference, objective_from_spec
    train_student(cfg, examples, init_from, out, objective=Preference(beta=0.1))     # lion.student.train

An objective turns the training's example rows into the Trainer's dataset and collator, supplies the Trainer
subclass that computes its loss, and reports its own figures; `lion.student.train` does the rest (model, LoRA or
full, checkpoints and resume, launch under torchrun, saving) the same for every objective.

- `SFT`: rows {"instruction", "input"?, "output"}; next-token cross-entropy on the answer (lion.student.data).
- `Preference` (DPO, Rafailov et al. 2023; with SPIN's choice of pairs, Chen et al. 2024, the same loss): rows
  {"instruction", "input"?, "chosen", "rejected", "ref_chosen", "ref_rejected"}, the last two the reference model's
  summed log-probabilities of each answer, computed before training (lion.student.score.answer_nll: the same
  tokens the loss sums, answer and EOS), so no reference model is held during training. The loss of a pair is
  -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), plus `sft_weight` times the chosen answer's mean
  per-token NLL (RPO, Pang et al. 2024; 0 = plain DPO). Figures: pairs trained and dropped, loss, the implicit
  reward margin beta * ((pi_c - ref_c) - (pi_r - ref_r)) and the share of pairs it ranks right (first and last
  logged step).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import DataError
from .data import (
    IGNORE,
    BatchLayout,
    Tokenized,
    _Collator,
    build_rows,
    format_prompt,
    make_collator,
    tokenize_example,
    tokenize_examples,
)


class Objective(Protocol):
    name: str

    def build(self, tokenizer: Any, cfg: Any, examples: list[dict[str, Any]], seed: int) -> tuple[Any, dict]:
        """(the Trainer's dataset, figures of the data: n_examples, n_dropped, ...)."""
        ...

    def row_sizes(self, dataset: Any) -> tuple[list[int], list[int]]:
        """(examples, real tokens) per dataset item: what lion.student.batching plans an optimizer step from."""
        ...

    def collator(self, tokenizer: Any, cfg: Any, attn_implementation: str | None) -> Any:
        """The collator (with lion's token counters) for the attention the model really runs."""
        ...

    def trainer_class(self, base: type) -> type:
        """The Trainer subclass that trains this objective (SFT: `base` itself)."""
        ...

    def spec(self) -> dict[str, Any]:
        """What the objective is, as JSON (a launched job rebuilds it; part of the training's fingerprint)."""
        ...

    def metrics(self) -> dict[str, Any]:
        """The objective's own figures after training."""
        ...


class SFT:
    name = "sft"

    def build(self, tokenizer: Any, cfg: Any, examples: list[dict[str, Any]], seed: int) -> tuple[Any, dict]:
        tokenized, stats = tokenize_examples(tokenizer, examples, max_length=cfg.max_length, fmt=cfg.prompt_format)
        if not tokenized:
            raise DataError(f"none of the {stats.n_examples} training examples fits student.max_length="
                            f"{cfg.max_length} (every prompt alone is that long); raise student.max_length")
        dataset = build_rows(tokenized, packing=cfg.packing, pack_length=cfg.pack_length or cfg.max_length, seed=seed)
        return dataset, {"n_examples": stats.n_examples, "n_dropped": stats.n_dropped,
                         "n_truncated": stats.n_truncated, "n_rows": len(dataset), "packing": cfg.packing}

    def row_sizes(self, dataset: Any) -> tuple[list[int], list[int]]:
        items = dataset.items
        if items and isinstance(items[0], list):  # packed rows: lists of examples
            return [len(r) for r in items], [sum(len(t) for t in r) for r in items]
        return [1] * len(items), [len(t) for t in items]

    def collator(self, tokenizer: Any, cfg: Any, attn_implementation: str | None) -> Any:
        return make_collator(packing=cfg.packing, pad_id=tokenizer.pad_token_id,
                             attn_implementation=attn_implementation)

    def trainer_class(self, base: type) -> type:
        return base

    def spec(self) -> dict[str, Any]:
        return {"name": self.name}

    def metrics(self) -> dict[str, Any]:
        return {"objective": self.name}


class TopKKD(SFT):
    """`student.objective: topk_kd`: SFT's rows, each answer with the teacher's top-k logprobs where the student's
    tokenizer reproduces the teacher's tokens (lion.student.kd: the sparse KL over the top-k plus a tail bucket,
    mixed with the cross-entropy by `student.kd_weight`); the others train with cross-entropy only, counted."""

    name = "topk_kd"

    def __init__(self, cfg: Any) -> None:
        self.weight, self.top_k = cfg.kd_weight, cfg.kd_top_k
        self.stats: Any = None

    def build(self, tokenizer: Any, cfg: Any, examples: list[dict[str, Any]], seed: int) -> tuple[Any, dict]:
        from .kd import TokenAligner

        aligner = TokenAligner(tokenizer, cfg.kd_top_k)
        tokenized, stats = tokenize_examples(tokenizer, examples, max_length=cfg.max_length, fmt=cfg.prompt_format,
                                             aligner=aligner)
        if not tokenized:
            raise DataError(f"none of the {stats.n_examples} training examples fits student.max_length="
                            f"{cfg.max_length} (every prompt alone is that long); raise student.max_length")
        _check_alignment(cfg, aligner.stats, len(tokenized))
        self.stats = aligner.stats
        dataset = build_rows(tokenized, packing=cfg.packing, pack_length=cfg.pack_length or cfg.max_length, seed=seed)
        return dataset, {"n_examples": stats.n_examples, "n_dropped": stats.n_dropped,
                         "n_truncated": stats.n_truncated, "n_rows": len(dataset), "packing": cfg.packing}

    def trainer_class(self, base: type) -> type:
        from .kd import kd_trainer

        return kd_trainer(base, self.weight)

    def spec(self) -> dict[str, Any]:
        return {"name": "sft"}  # what it computes is in the student config (objective, kd_*): the fingerprint's

    def metrics(self) -> dict[str, Any]:
        return {"objective": self.name, "kd": {**(self.stats.to_json() if self.stats is not None else {}),
                                               "weight": self.weight, "top_k": self.top_k}}


def _check_alignment(cfg: Any, st: Any, n: int) -> None:
    """topk_kd: stop when no answer has logprobs, or when too few align (the tokenizers differ); else say how many
    answers train with cross-entropy only."""
    seen = st.with_targets + st.mismatched
    if not seen:
        raise DataError(f"student.objective: topk_kd, but none of the {n} training answers has teacher logprobs "
                        f"({st.without_logprobs} without): set llm.teacher.top_logprobs before the teacher answers "
                        "(answers bought without it keep none), or student.objective: sft")
    share = st.with_targets / seen
    if share < cfg.kd_min_match:
        raise DataError(
            f"student.objective: topk_kd: the student's tokenizer reproduces the teacher's tokens for only "
            f"{st.with_targets} of {seen} answers ({share:.0%} < student.kd_min_match {cfg.kd_min_match:g}; e.g. "
            f"{', '.join(st.examples) or '-'}): the teacher and the student tokenise differently, and lion does not "
            "align two vocabularies (docs/student.md) — set student.objective: sft, or use a student with the "
            "teacher's tokenizer")
    if (st.mismatched or st.without_logprobs) and int(os.environ.get("RANK", "0")) == 0:
        print(f"note: topk_kd: {st.with_targets} answers train on the teacher's top-k; {st.mismatched} whose tokens "
              f"the student's tokenizer does not reproduce and {st.without_logprobs} without logprobs train with "
              "cross-entropy only", flush=True)




# --------------------------------------------------------------------------------------------- preference


@dataclass
class Pair:
    chosen: Tokenized
    rejected: Tokenized
    ref_chosen: float
    ref_rejected: float


class PairCollator(_Collator):
    """A batch of pairs as one right-padded batch of 2B sequences (the chosen answers first, then the rejected
    ones), with the reference log-probabilities beside it."""

    def __call__(self, pairs: list[Pair]) -> dict[str, Any]:
        import torch

        seqs = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        lay = BatchLayout.padded([len(t) for t in seqs])
        ref = torch.tensor([[p.ref_chosen, p.ref_rejected] for p in pairs], dtype=torch.float32)
        return {**self._fields(lay, seqs), "attention_mask": lay.attention_mask(), "ref_logps": ref}


def sequence_logps(logits: Any, labels: Any) -> tuple[Any, Any]:
    """(summed log-probability of each row's supervised tokens, their count): token t predicted at t - 1."""
    import torch

    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target = labels[:, 1:]
    keep = target != IGNORE
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep
    return picked.sum(-1), keep.sum(-1)


def preference_loss(pi: Any, ref: Any, beta: float) -> tuple[Any, Any]:
    """Per pair: the DPO loss -log sigmoid(beta * margin) and the implicit reward margin beta * ((pi_c - ref_c) -
    (pi_r - ref_r)), for `pi` and `ref` of shape (pairs, 2) = (chosen, rejected) summed log-probabilities."""
    import torch.nn.functional as F

    margin = beta * ((pi[:, 0] - ref[:, 0]) - (pi[:, 1] - ref[:, 1]))
    return -F.logsigmoid(margin), margin


@dataclass
class Preference:
    """DPO's loss on (chosen, rejected) pairs against precomputed reference log-probabilities (see the module doc)."""

    beta: float = 0.1
    sft_weight: float = 0.0
    name: str = "preference"
    figures: dict[str, Any] = field(default_factory=dict)

    def build(self, tokenizer: Any, cfg: Any, examples: list[dict[str, Any]], seed: int) -> tuple[Any, dict]:
        from .data import ListDataset

        pairs: list[Pair] = []
        dropped = truncated = 0
        for i, ex in enumerate(examples):
            for k in ("instruction", "chosen", "rejected"):
                if not isinstance(ex.get(k), str):
                    raise DataError(f"preference pairs[{i}].{k}: expected a string, got {ex.get(k)!r:.80}")
            prompt = format_prompt(ex["instruction"], ex.get("input") or "", fmt=cfg.prompt_format, tokenizer=tokenizer)
            c, cut_c = tokenize_example(tokenizer, prompt, ex["chosen"], cfg.max_length)
            r, cut_r = tokenize_example(tokenizer, prompt, ex["rejected"], cfg.max_length)
            if c is None or r is None or cut_c or cut_r:  # a cut answer's reference log-prob is of another text
                dropped += 1
                truncated += bool(cut_c or cut_r)
                continue
            pairs.append(Pair(c, r, float(ex["ref_chosen"]), float(ex["ref_rejected"])))
        if not pairs:
            raise DataError(f"none of the {len(examples)} preference pairs fits student.max_length={cfg.max_length}")
        self.figures.update(n_pairs=len(pairs), n_dropped=dropped, n_truncated=truncated)
        return ListDataset(pairs), {"n_examples": len(examples), "n_dropped": dropped, "n_truncated": truncated,
                                    "n_rows": len(pairs), "packing": False}

    def row_sizes(self, dataset: Any) -> tuple[list[int], list[int]]:
        return [1] * len(dataset.items), [len(p.chosen) + len(p.rejected) for p in dataset.items]

    def collator(self, tokenizer: Any, cfg: Any, attn_implementation: str | None) -> Any:
        return PairCollator(tokenizer.pad_token_id)  # padded with a mask: FlashAttention unpads it itself

    def trainer_class(self, base: type) -> type:
        beta, sft_weight, figures = self.beta, self.sft_weight, self.figures

        class PreferenceTrainer(base):  # type: ignore[misc, valid-type]
            loss_is_scaled_for_ga = False  # the mean over the micro-batch's pairs: the Trainer divides by GA

            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                ref = inputs.pop("ref_logps")
                labels = inputs.pop("labels")
                out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
                logps, counts = sequence_logps(out.logits, labels)
                n = ref.shape[0]
                pi = logps.view(2, n).T  # (pairs, [chosen, rejected])
                losses, margin = preference_loss(pi, ref.to(pi.device), beta)
                loss = losses.mean()
                if sft_weight:
                    loss = loss + sft_weight * (-logps[:n] / counts[:n].clamp(min=1)).mean()
                if model.training:
                    step = figures.setdefault("steps", [])
                    d, m = losses.detach(), margin.detach()  # figures for the record, outside the graph
                    step.append([float(d.mean()), float(m.mean()), float((m > 0).float().mean())])
                return (loss, out) if return_outputs else loss

        return PreferenceTrainer

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "beta": self.beta, "sft_weight": self.sft_weight}

    def metrics(self) -> dict[str, Any]:
        steps = self.figures.get("steps") or []
        first, last = (steps[0], steps[-1]) if steps else ([None] * 3, [None] * 3)
        return {"objective": self.spec(), "n_pairs": self.figures.get("n_pairs"),
                "pairs_dropped": self.figures.get("n_dropped"),
                "loss_first": first[0], "loss_last": last[0], "margin_first": first[1], "margin_last": last[1],
                "ranked_right_first": first[2], "ranked_right_last": last[2]}


def default_objective(cfg: Any) -> Objective:
    """The objective `student.objective` names (a preference stage passes its own)."""
    return TopKKD(cfg) if getattr(cfg, "objective", "sft") == "topk_kd" else SFT()


def objective_from_spec(spec: dict[str, Any] | None, cfg: Any) -> Objective:
    """The objective of a launched job, from the spec its parent wrote and the student config."""
    if not spec or spec.get("name") == "sft":
        return default_objective(cfg)
    if spec.get("name") == "preference":
        return Preference(beta=float(spec["beta"]), sft_weight=float(spec.get("sft_weight", 0.0)))
    raise ValueError(f"unknown training objective {spec!r}")
