"""pytest configuration of the benchmark suites: options, shared fixtures, machine info.

Run:  pytest bench/ --benchmark-only --benchmark-json=results/throughput.cpu.json
CI:   pytest bench/ --benchmark-disable        (every body once, nothing timed)

Every benchmark uses pedantic mode (see bench/common.py), so pytest-benchmark's own calibration
options (--benchmark-min-rounds, --benchmark-max-time, --benchmark-warmup) do not apply; the
options below set the rounds instead.
"""

from __future__ import annotations

import importlib.metadata
import os

import pytest
import torch

from bench.common import Timing
from decoder.hardware import machine_info


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("decoder bench")
    group.addoption("--bench-seconds", type=float, default=6.0,
                    help="time budget per benchmark in seconds (default 6): rounds = seconds / one call")
    group.addoption("--bench-min-rounds", type=int, default=3, help="fewest timed rounds per benchmark (default 3)")
    group.addoption("--bench-threads", type=int, default=None,
                    help="torch (and onnxruntime) CPU threads (default: torch's default, all cores)")


def pytest_configure(config: pytest.Config) -> None:
    threads = config.getoption("--bench-threads", default=None)
    if threads is not None:
        if threads < 1:
            raise pytest.UsageError(f"--bench-threads={threads}: must be >= 1")
        torch.set_num_threads(threads)
    if config.getoption("--bench-min-rounds", default=3) < 1:
        raise pytest.UsageError("--bench-min-rounds must be >= 1")
    if config.getoption("--bench-seconds", default=6.0) < 0:
        raise pytest.UsageError("--bench-seconds must be >= 0")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """Record the hardware and software every number was measured on (read by `decoder bench`)."""
    machine_info["decoder"] = machine_info_now()


def machine_info_now() -> dict:
    info = machine_info()  # cpu, cpu_cores, torch_threads, torch, cpu_capability, gpu, onnxruntime
    info["cpu_affinity"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    info["transformers"] = _version("transformers")
    info["numpy"] = _version("numpy")
    return info


@pytest.fixture(scope="session")
def timing(pytestconfig: pytest.Config) -> Timing:
    return Timing(seconds=pytestconfig.getoption("--bench-seconds"),
                  min_rounds=pytestconfig.getoption("--bench-min-rounds"))


@pytest.fixture(scope="session")
def tokenizer():
    """The book's compact cl100k_base vocabulary (min_count 2: ~7.9k ids), built from DECODER_DATA_DIR."""
    from decoder.config import DataConfig
    from decoder.data import DataError, prepare
    from decoder.tokenizer import TokenizerError

    try:
        return prepare(DataConfig()).tokenizer
    except (DataError, TokenizerError) as exc:
        pytest.skip(f"the book or the cl100k_base encoding is unavailable ({exc}); set DECODER_DATA_DIR "
                    "and TIKTOKEN_CACHE_DIR")


@pytest.fixture(scope="session")
def full_vocab_size(tokenizer) -> int:
    """cl100k_base's full vocabulary (100,277 rows): the reference notebook's output layer."""
    return tokenizer.encoding.n_vocab
