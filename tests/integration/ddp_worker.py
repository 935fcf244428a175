"""Run by tests/integration/test_distributed.py under torchrun: train a config and record which rank
wrote files.

usage: ddp_worker.py CONFIG RUN_DIR {train,resume,interrupt,fail}
"""

import os
import sys
from pathlib import Path

from decoder import checkpoint, io, runs
from decoder import train as train_module
from decoder.config import load_config
from decoder.distributed import shutdown

config_path, run_dir, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
rank = int(os.environ["RANK"])
log = run_dir.parent / f"{run_dir.name}.writes-rank{rank}.txt"


def recording(fn):
    def wrapper(path, *args, **kwargs):
        with open(log, "a") as f:
            f.write(f"{path}\n")
        return fn(path, *args, **kwargs)

    return wrapper


recorded_write = recording(io.atomic_write)
for module in (io, checkpoint, runs):  # every file write of a run goes through io.atomic_write
    module.atomic_write = recorded_write


def on_step(step: int, metrics: dict) -> bool:
    if mode == "fail" and rank == 1 and step == 3:
        raise RuntimeError("rank 1 failed on purpose at step 3")
    return mode == "interrupt" and step == 3


try:
    summary = train_module.train(load_config(config_path), run_dir, resume=mode == "resume", quiet=True,
                                 on_step=on_step)
    print(f"rank {rank}: {summary['status']} at step {summary['step']}, tokens {summary['tokens_seen']}")
finally:
    shutdown()
