"""The figures `vllm bench serve` reports, from what each streaming request saw on the client.

One `Trace` per request: when it was sent, when each token chunk arrived, when the stream ended and
how many tokens it generated (the usage chunk). Definitions as in vLLM's benchmark:

- TTFT: first token chunk - sent;
- TPOT: (end-to-end latency - TTFT) / (output tokens - 1), for requests of more than one token;
- ITL: the gaps between consecutive token chunks (pooled over the requests);
- E2EL: end - sent;
- request and output token throughput: completed requests and generated tokens over the run's
  wall time (first request sent to last stream ended);
- goodput: requests per second that met every target given (`ttft`, `tpot`, `e2el`, in ms).

Times are in seconds inside, milliseconds in the summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SLO_KEYS = ("ttft", "tpot", "e2el")


@dataclass
class Trace:
    """What one streaming request saw (perf_counter seconds)."""

    sent: float
    chunks: list[float] = field(default_factory=list)
    """Arrival time of each chunk that carried text (one token, up to held-back UTF-8)."""
    end: float = float("nan")
    output_tokens: int = 0
    prompt_tokens: int = 0

    @property
    def ttft(self) -> float:
        return self.chunks[0] - self.sent

    @property
    def e2el(self) -> float:
        return self.end - self.sent

    @property
    def tpot(self) -> float | None:
        if self.output_tokens < 2:
            return None
        return (self.e2el - self.ttft) / (self.output_tokens - 1)

    @property
    def itl(self) -> list[float]:
        return [b - a for a, b in zip(self.chunks, self.chunks[1:])]


def parse_goodput(items: list[str]) -> dict[str, float]:
    """`["ttft:200", "tpot:50"]` -> {"ttft": 0.2, "tpot": 0.05} (targets in ms in, seconds out)."""
    targets = {}
    for item in items:
        key, sep, value = item.partition(":")
        try:
            ms = float(value)
        except ValueError:
            ms = float("nan")
        if not sep or key not in SLO_KEYS or not ms > 0:
            raise ValueError(f"--goodput {item!r}: expected KEY:MS with KEY one of {', '.join(SLO_KEYS)} and MS > 0")
        targets[key] = ms / 1000
    return targets


def _spread(values: list[float], name: str, percentiles: tuple[float, ...]) -> dict[str, float]:
    """mean, median and each percentile of `values` (seconds) in ms under `{stat}_{name}_ms`."""
    arr = np.asarray(values, dtype=float) * 1000
    if arr.size == 0:
        arr = np.array([np.nan])
    out = {f"mean_{name}_ms": float(arr.mean()), f"median_{name}_ms": float(np.median(arr)),
           f"std_{name}_ms": float(arr.std())}
    out.update({f"p{q:g}_{name}_ms": float(np.percentile(arr, q)) for q in percentiles})
    return out


def meets(trace: Trace, targets: dict[str, float]) -> bool:
    """Whether the request met every target (a one-token request has no TPOT: that target is met)."""
    values = {"ttft": trace.ttft, "tpot": trace.tpot, "e2el": trace.e2el}
    return all(values[k] is None or values[k] <= limit for k, limit in targets.items())


def summarize(traces: list[Trace], *, failed: int = 0, targets: dict[str, float] | None = None,
              percentiles: tuple[float, ...] = (99,)) -> dict[str, float]:
    """The benchmark's figures over completed requests (`traces`, each with at least one token chunk)."""
    if not traces:
        raise ValueError("no request completed: nothing to summarize")
    duration = max(t.end for t in traces) - min(t.sent for t in traces)
    output = sum(t.output_tokens for t in traces)
    out = {"completed": len(traces), "failed": failed, "duration_s": duration,
           "total_output_tokens": output, "request_throughput": len(traces) / duration,
           "output_throughput": output / duration,
           "total_token_throughput": (output + sum(t.prompt_tokens for t in traces)) / duration}
    out.update(_spread([t.ttft for t in traces], "ttft", percentiles))
    out.update(_spread([t.tpot for t in traces if t.tpot is not None], "tpot", percentiles))
    out.update(_spread([gap for t in traces for gap in t.itl], "itl", percentiles))
    out.update(_spread([t.e2el for t in traces], "e2el", percentiles))
    if targets:
        out["goodput"] = sum(meets(t, targets) for t in traces) / duration
    return out
