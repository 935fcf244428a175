"""What machine this is and which fast path it offers: device choice, bf16 check, matmul peak.

Precision 'auto' is decided by measurement, not by a CPU name: on a CPU, bf16 autocast is used
only when a bf16 matmul actually runs faster than an fp32 one here (AVX512-BF16 and AMX CPUs:
2.5-7x; CPUs without bf16 units: slower).
"""

from __future__ import annotations

import functools
import os
import platform
import time
from contextlib import nullcontext

import torch

from decoder.errors import UserError


class DeviceError(UserError, ValueError):
    """A device or precision this machine does not offer."""


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """A flat record of the hardware and software a number was measured on."""
    info = {
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    return info


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"training.device={name!r}: CUDA is not available on this machine; use 'cpu' or 'auto'")
    return device


def matmul_flops(device: torch.device, dtype: torch.dtype, n: int = 1024, seconds: float = 0.2) -> float:
    """Measured FLOP/s of an n x n matmul in `dtype` on `device` (median of timed rounds)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(3):  # warm-up, outside the timing
        a @ b
    sync()
    start, reps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds / 5:  # calibrate calls per round
        a @ b
        reps += 1
    sync()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync()
        times.append((time.perf_counter() - t0) / reps)
    times.sort()
    return 2 * n**3 / times[len(times) // 2]


@functools.lru_cache(maxsize=None)
def bf16_pays(device_type: str) -> bool:
    """Whether bf16 autocast should be used on this device type: CUDA if supported; CPU if measured faster."""
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    device = torch.device("cpu")
    return matmul_flops(device, torch.bfloat16, n=512, seconds=0.1) > 1.5 * matmul_flops(
        device, torch.float32, n=512, seconds=0.1
    )


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if bf16_pays(device.type) else "fp32"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError("training.precision='bf16': this GPU does not support bf16; use 'fp32' or 'auto'")
    return precision


def autocast(device: torch.device | str, precision: str):
    """The context a forward pass runs under for a resolved precision: bf16 autocast for 'bf16',
    nothing for 'fp32'. Training, evaluation, generation and the benchmarks all use this one."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return nullcontext()


def training_attention_backend(device_type: str, context_length: int, precision: str):
    """SDPA kernel for the uncached (training) attention: on CPU in bf16 the math kernel up to a
    context of 128; otherwise SDPA's own choice (None: flash on CPU, flash/memory-efficient on CUDA).

    A rule, not a per-run measurement, so that two runs of one config take the same kernel and give
    the same numbers (the kernels round differently). Measured by `python -m bench.attention_kernels`
    (causal forward + backward; AMD EPYC Zen 5, 2 threads): in bf16 the CPU flash kernel took 3.4x
    the math kernel's time at the notebook's shape (T=40), 1.7x at T=128 and 0.94x at T=256; in fp32
    flash was the faster at every shape (0.80-0.88x)."""
    from torch.nn.attention import SDPBackend

    if device_type == "cpu" and precision == "bf16" and context_length <= 128:
        return SDPBackend.MATH
    return None
