"""The server's Prometheus metrics, in a registry of its own (so several apps in one process, as in
the tests, never collide), exposed as text at GET /metrics.

Names carry their units; token latencies are measured in the engine when a token is sampled, so
they include queueing and batching but not the network. A request's time in the queue runs from
its arrival to the engine taking its first sequence into the batch; its end-to-end latency, from
its arrival to the end of its last sequence (whatever the finish reason), as vLLM's
`request_queue_time_seconds` and `e2e_request_latency_seconds`.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    """Gauges, counters and histograms of one server (see the names for what each counts)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.running = Gauge("decoder_requests_running", "Requests with sequences being decoded", registry=r)
        self.waiting = Gauge("decoder_requests_waiting", "Requests queued, none of their sequences started",
                             registry=r)
        self.prompt_tokens = Counter("decoder_prompt_tokens", "Prompt tokens of admitted requests", registry=r)
        self.generated_tokens = Counter("decoder_generated_tokens", "Tokens sampled", registry=r)
        self.finished = Counter("decoder_sequences_finished", "Sequences ended, by finish reason",
                                ["finish_reason"], registry=r)
        self.rejected = Counter("decoder_requests_rejected", "Requests refused, by HTTP status", ["status"],
                                registry=r)
        self.ttft = Histogram("decoder_time_to_first_token_seconds",
                              "From a request's arrival to its first sampled token", buckets=LATENCY_BUCKETS,
                              registry=r)
        self.itl = Histogram("decoder_inter_token_latency_seconds",
                             "Between consecutive sampled tokens of a sequence", buckets=LATENCY_BUCKETS,
                             registry=r)
        self.queue_time = Histogram("decoder_request_queue_time_seconds",
                                    "From a request's arrival to its first sequence joining the batch",
                                    buckets=LATENCY_BUCKETS + (60.0, 120.0), registry=r)
        self.request_latency = Histogram("decoder_request_latency_seconds",
                                         "From a request's arrival to the end of its last sequence",
                                         buckets=REQUEST_BUCKETS, registry=r)
        self.batch_size = Histogram("decoder_batch_rows", "Rows sampled per engine step", buckets=BATCH_BUCKETS,
                                    registry=r)

    def observe_token(self, arrived: float, last_token_at: float | None, now: float) -> None:
        self.generated_tokens.inc()
        if last_token_at is None:
            self.ttft.observe(now - arrived)
        else:
            self.itl.observe(now - last_token_at)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
