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


def test_multinode_and_command_launch_lines(tmp_path) -> None:
    from lion.student.launch import training_command

    cfg = StudentConfig(model="m", num_gpus=8, nnodes=4, launcher="torchrun_multinode",
                        rdzv_endpoint="node0:29400", rdzv_id="job7")
    cmd = training_command(cfg, tmp_path / "spec.json")
    assert cmd[1:] == ["-m", "torch.distributed.run", "--nnodes", "4", "--nproc_per_node", "8", "--rdzv_backend",
                       "c10d", "--rdzv_endpoint", "node0:29400", "--rdzv_id", "job7", "--max_restarts", "0",
                       "-m", "lion.student.train", str(tmp_path / "spec.json")]
    (tmp_path / "acc.yaml").write_text("num_machines: 2\n")
    acc = training_command(StudentConfig(model="m", launcher="accelerate", accelerate_config=str(tmp_path / "acc.yaml")),
                           tmp_path / "spec.json")
    assert acc[3:] == ["--config_file", str(tmp_path / "acc.yaml"), "--module", "lion.student.train",
                       str(tmp_path / "spec.json")]
    assert needs_launch(StudentConfig(model="m", launcher="command", launch_command="srun x {spec}"))
    from lion.config import config_from_dict
    from lion.errors import ConfigError

    base = {"pools": {"train_seed": "x"}}
    with pytest.raises(ConfigError, match=r"student\.rdzv_endpoint: must be"):
        config_from_dict({**base, "student": {"model": "m", "launcher": "torchrun_multinode", "nnodes": 2}})
    with pytest.raises(ConfigError, match=r"student\.launch_command: must hold \{spec\}"):
        config_from_dict({**base, "student": {"model": "m", "launcher": "command", "launch_command": "srun train"}})


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_torchrun_agents_at_a_c10d_rendezvous_train_what_one_node_trains(tmp_path, tiny_char_base) -> None:
    """Two nodes (two torchrun agents, one process each, c10d rendezvous on 127.0.0.1: the second agent started
    through student.worker_command as `ssh node1 {cmd}` would) train the same student as one node with two
    processes: same world size, same shards, so the saved weights agree."""
    import torch
    from transformers import AutoModelForCausalLM

    common = dict(model=str(tiny_char_base), lr=3e-3, per_device_batch_size=4, grad_accum=1, max_steps=4,
                  warmup_ratio=0.0, max_length=64, logging_steps=1, packing=True, pack_length=128)
    examples = student_fact_examples(6)
    one = train_student(StudentConfig(num_gpus=2, **common), examples, tiny_char_base, tmp_path / "one",
                        progress=False)
    multi_cfg = StudentConfig(num_gpus=1, nnodes=2, launcher="torchrun_multinode",
                              rdzv_endpoint=f"127.0.0.1:{_free_port()}", worker_command="{cmd}", **common)
    two = train_student(multi_cfg, examples, tiny_char_base, tmp_path / "two", progress=False)
    assert two.metrics["world_size"] == 2 and two.metrics["steps"] == 4
    assert (tmp_path / "two.launch" / "node1.log").is_file()
    assert two.metrics["losses"] == pytest.approx(one.metrics["losses"], rel=1e-5, abs=1e-6)
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "one").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "two").state_dict()
    assert a.keys() == b.keys()
    base = AutoModelForCausalLM.from_pretrained(tiny_char_base).state_dict()
    moved = max((a[k] - base[k]).abs().max().item() for k in a)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert moved > 1e-3, "training did not change the weights: the comparison would prove nothing"
    assert worst <= 1e-5 * max(1.0, moved), f"two-node weights differ from one-node weights by {worst}"
    assert torch.isfinite(torch.tensor(worst))
