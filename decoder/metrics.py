"""One formula for the quality figures every table compares: nats/token, perplexity, bits per byte.

Training's evaluation, the n-gram baselines, the export's int8 check and the report all call these,
so "model vs trigram" compares numbers computed the same way. Bits per byte divides the summed
negative log-likelihood (in bits) of the scored tokens by the UTF-8 bytes those tokens decode to,
so it does not depend on the tokenizer. Torch-free.
"""

from __future__ import annotations

import math

LN2 = math.log(2.0)


def perplexity(nats_per_token: float) -> float:
    """exp(mean nats per token), inf where that overflows."""
    try:
        return math.exp(nats_per_token)
    except OverflowError:
        return math.inf


def bits_per_byte(total_nats: float, n_bytes: int) -> float:
    """Summed negative log-likelihood in nats over the bytes it covers, as bits per byte."""
    return total_nats / LN2 / max(int(n_bytes), 1)


def quality(total_nats: float, n_tokens: int, n_bytes: int) -> dict[str, float]:
    """The figures of one evaluation: `val_loss` (nats/token), `val_ppl`, `val_bpb`."""
    loss = total_nats / max(int(n_tokens), 1)
    return {"val_loss": loss, "val_ppl": perplexity(loss), "val_bpb": bits_per_byte(total_nats, n_bytes)}
