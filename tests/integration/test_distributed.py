"""Data-parallel training with torch.distributed (gloo, 2 ranks on CPU) under torchrun."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tinyconf import tiny_config
from decoder import train as train_module
from decoder.checkpoint import load_checkpoint, load_model
from decoder.step import batch_sampler
from decoder.train import TrainingError, train

WORKER = Path(__file__).parent / "ddp_worker.py"
STEPS = 6


def torchrun(config_path: Path, run_dir: Path, mode: str, nproc: int = 2) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
         str(WORKER), str(config_path), str(run_dir), mode],
        capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.fixture
def ddp_config(small_corpus, tmp_path):
    config = tiny_config(small_corpus, training={"max_steps": STEPS, "eval_interval": 3, "batch_size": 4})
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    return config, path


class UnionSampler:
    """What the two ranks draw together: rank 0's micro-batch stacked on rank 1's."""

    def __init__(self, config, tokens, rank=0):
        self.parts = [batch_sampler(config, tokens, r) for r in (0, 1)]

    def next_batch(self):
        xs, ys = zip(*(p.next_batch() for p in self.parts))
        return torch.cat(xs), torch.cat(ys)

    def state_dict(self):
        return [p.state_dict() for p in self.parts]


def test_two_ranks_match_one_process_on_the_union_of_their_batches(ddp_config, tmp_path, monkeypatch):
    config, path = ddp_config
    result = torchrun(path, tmp_path / "ddp", "train")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"rank 0: completed at step {STEPS}, tokens {STEPS * 4 * 16 * 2}" in result.stdout
    assert f"rank 1: completed at step {STEPS}" in result.stdout

    monkeypatch.setattr(train_module, "batch_sampler", UnionSampler)
    train(config, tmp_path / "single", quiet=True)
    ddp = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "latest.pt")["model"]
    single = load_checkpoint(tmp_path / "single" / "checkpoints" / "latest.pt")["model"]
    assert not any(k.startswith("module.") for k in ddp)
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-4, atol=1e-5, msg=name)

    # Only rank 0 wrote files.
    rank0 = (tmp_path / "ddp.writes-rank0.txt").read_text().splitlines()
    assert any(line.endswith("latest.pt") for line in rank0) and any(line.endswith("summary.json") for line in rank0)
    assert not (tmp_path / "ddp.writes-rank1.txt").exists()

    # A DDP checkpoint loads in a single process and generates.
    model, tokenizer, _, _ = load_model(tmp_path / "ddp")
    logits, _ = model(torch.tensor([tokenizer.encode("The engineer")]))
    assert torch.isfinite(logits).all()


def test_ddp_interrupt_and_resume_equals_uninterrupted(ddp_config, tmp_path):
    _, path = ddp_config
    full = torchrun(path, tmp_path / "full", "train")
    assert full.returncode == 0, full.stderr[-3000:]
    stopped = torchrun(path, tmp_path / "split", "interrupt")
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert "rank 0: interrupted at step 3" in stopped.stdout and "rank 1: interrupted at step 3" in stopped.stdout
    resumed = torchrun(path, tmp_path / "split", "resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "latest.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "latest.pt")["model"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)

    # The same run cannot be resumed by a different number of processes.
    config = yaml.safe_load(path.read_text())
    from decoder.config import config_from_dict

    with pytest.raises(TrainingError, match="saved by 2 process"):
        train(config_from_dict(config), tmp_path / "split", quiet=True, resume=True)


def test_a_failing_rank_takes_the_job_down_with_its_error(ddp_config, tmp_path):
    _, path = ddp_config
    result = torchrun(path, tmp_path / "fail", "fail")
    assert result.returncode != 0
    assert "rank 1 failed on purpose at step 3" in result.stderr
