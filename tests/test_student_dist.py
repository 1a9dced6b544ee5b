"""A 2-process torchrun on CPU (gloo) trains the student and saves one checkpoint (the multi-GPU launch path).

    python -m pytest -q tests/test_student_dist.py

On CPU the Trainer runs DDP under torchrun (FSDP sharding itself is checked on a GPU machine by
bench/student_train.py --gpu); this exercises our launcher, the spec file, rank-0-only saving and the
all-reduced metrics.
"""

from __future__ import annotations

import json

import pytest
from conftest import student_fact_examples

from lion.config import StudentConfig
from lion.student.launch import launcher_command
from lion.student.train import needs_launch, train_student


def test_launcher_command_lines(monkeypatch) -> None:
    cfg = StudentConfig(model="m", num_gpus=4)
    assert needs_launch(cfg) and not needs_launch(StudentConfig(model="m"))
    assert needs_launch(StudentConfig(model="m", fsdp="full_shard auto_wrap"))
    cmd = launcher_command(cfg, env={})
    assert cmd[1:] == ["-m", "torch.distributed.run", "--nproc_per_node", "4", "--nnodes", "1", "--standalone"]
    multi = StudentConfig(model="m", num_gpus=8, nnodes=2)
    cmd = launcher_command(multi, env={"MASTER_ADDR": "10.0.0.1", "NODE_RANK": "1"})
    assert cmd[-6:] == ["--node_rank", "1", "--master_addr", "10.0.0.1", "--master_port", "29500"]
    acc = launcher_command(StudentConfig(model="m", num_gpus=2, launcher="accelerate"), env={})
    assert acc[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" in acc and acc[-1] == "--module"
    from lion.errors import ConfigError

    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        launcher_command(multi, env={})


@pytest.mark.slow
def test_two_process_torchrun_on_cpu_trains_and_saves(tmp_path, tiny_char_base) -> None:
    from transformers import AutoModelForCausalLM

    cfg = StudentConfig(model=str(tiny_char_base), num_gpus=2, lr=3e-3, per_device_batch_size=8, grad_accum=1,
                        max_steps=6, warmup_ratio=0.0, max_length=64, logging_steps=1, packing=True, pack_length=128)
    res = train_student(cfg, student_fact_examples(10), tiny_char_base, tmp_path / "dist", progress=False)
    m = res.metrics
    assert m["world_size"] == 2 and m["steps"] == 6
    assert m["train_loss_last"] < m["train_loss_first"]
    assert json.loads((tmp_path / "dist" / "lion_student.json").read_text())["kind"] == "full"
    assert not (tmp_path / "dist.tmp").exists()
    assert (tmp_path / "dist.launch" / "train.log").is_file()
    AutoModelForCausalLM.from_pretrained(tmp_path / "dist")
