"""Time SDPA's CPU kernels (flash vs math) for causal attention, forward + backward, at the training
shapes of the shipped sizes; the basis of decoder.hardware.training_attention_backend's rule.

    python -m bench.attention_kernels          # prints one line per shape: ms per call and the ratio
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# (batch, heads, context, head_dim): the reference notebook's shape, the default's, the medium one's.
SHAPES = [(50, 10, 40, 50), (32, 4, 128, 64), (16, 6, 256, 64)]


def median_ms(backend: SDPBackend, shape: tuple[int, int, int, int], dtype: torch.dtype, rounds: int = 7) -> float:
    q, k, v = (torch.randn(shape, dtype=dtype, requires_grad=True) for _ in range(3))
    times = []
    with sdpa_kernel(backend):
        for i in range(rounds + 2):  # two warm-up calls outside the timing
            start = time.perf_counter()
            F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
            if i >= 2:
                times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1000


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for dtype in (torch.bfloat16, torch.float32):
        for shape in SHAPES:
            flash = median_ms(SDPBackend.FLASH_ATTENTION, shape, dtype)
            math_ = median_ms(SDPBackend.MATH, shape, dtype)
            print(f"{str(dtype):15} B,H,T,D={shape}: flash {flash:7.2f} ms, math {math_:7.2f} ms, flash/math {flash / math_:.2f}x")


if __name__ == "__main__":
    main()
