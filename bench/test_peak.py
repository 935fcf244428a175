"""The device's own limits, measured in the same run: matmul peak (fp32, bf16) and read bandwidth.

The report divides achieved FLOP/s by the matmul peak of the same device and precision (MFU),
and weight bytes per generated token by the read bandwidth (the memory-bandwidth bound).
"""

from __future__ import annotations

import pytest
import torch

from bench.common import DEVICES, PRECISIONS, measure, skip_unless_supported

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _matmul_shape(device: str) -> tuple[int, int]:
    """(n, matmuls per call): large enough to reach the peak, short enough for a 2-core CPU."""
    return (2048, 1) if device == "cpu" else (8192, 10)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("device", DEVICES)
def test_matmul_peak(benchmark, timing, device: str, precision: str) -> None:
    skip_unless_supported(device, precision)
    n, reps = _matmul_shape(device)
    a = torch.randn(n, n, device=device).to(DTYPES[precision])
    b = torch.randn(n, n, device=device).to(DTYPES[precision])

    def run() -> torch.Tensor:
        for _ in range(reps):
            c = a @ b
        return c

    c = measure(benchmark, run, device=device, timing=timing, workload="matmul", precision=precision,
                flops=2 * n**3 * reps, n=n)
    assert c.shape == (n, n) and c.dtype == DTYPES[precision]


@pytest.mark.parametrize("device", DEVICES)
def test_read_bandwidth(benchmark, timing, device: str) -> None:
    # Far larger than any cache: 512 MiB on a CPU, 1 GiB on a GPU (summed 10 times per call).
    numel, reps = (2**27, 1) if device == "cpu" else (2**28, 10)
    x = torch.ones(numel, device=device)

    def run() -> torch.Tensor:
        for _ in range(reps):
            total = x.sum()
        return total

    total = measure(benchmark, run, device=device, timing=timing, workload="bandwidth",
                    bytes=numel * x.element_size() * reps)
    assert abs(total.item() - numel) <= 1e-3 * numel  # a sum of ones: right up to fp32 rounding
