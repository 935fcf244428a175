"""The limits of one server (`decoder serve`'s options), checked when built."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeConfig:
    """Limits of one server."""

    max_batch: int = 32
    """Sequences decoded together (1 turns batching off: one request at a time)."""
    max_queue: int = 256
    """Sequences (one per prompt and choice) waiting beyond the free slots before requests get 429."""
    max_body_bytes: int = 1 << 20
    """Largest request body (413 beyond)."""
    shutdown_grace: float = 10.0
    """On SIGTERM, seconds in-flight requests may run on before they are cancelled."""

    def __post_init__(self) -> None:
        problems = config_problems(vars(self))
        if problems:
            raise ValueError("; ".join(problems))


LOWER_BOUNDS = {"max_batch": 1, "max_queue": 0, "max_body_bytes": 1, "shutdown_grace": 0}


def config_problems(values: dict) -> list[str]:
    """'field=value: must be >= low' for each out-of-range field among `values`."""
    return [f"{name}={value}: must be >= {LOWER_BOUNDS[name]}" for name, value in values.items()
            if name in LOWER_BOUNDS and not value >= LOWER_BOUNDS[name]]
