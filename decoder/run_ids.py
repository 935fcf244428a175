"""A run's identity over time: the config as saved with a run (keys added since filled in with the
value the run had) and its id, `run_id`, with the ids it had before later keys existed (`run_ids`),
so folders and experiments made then are still found."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from decoder.config import RunConfig, config_from_dict, read_yaml

ADDED_KEYS: dict[tuple[str, str], Any] = {("training", "muon_momentum"): 0.95, ("data", "fallback"): "bytes",
                                          ("training", "final_protocols"): None, ("training", "max_flops"): None,
                                          ("model", "norm"): "layernorm", ("model", "mlp"): "gelu",
                                          ("model", "qk_norm"): False, ("training", "ema"): 0.0,
                                          ("training", "ema_warmup"): 10.0, ("training", "input_noise"): 0.0}
"""Keys added after runs were saved without them, and the value that reproduces what those runs did.
A saved config lacking one means that value, not today's default (which may differ); and a config
holding that value is hashed without the key (`run_id`), so the ids of runs made before it existed,
and the experiments that name them, stay valid."""


def saved_config_from_dict(raw: Any, source: str) -> RunConfig:
    """A resolved config saved with a run (its config.yaml, a checkpoint): as `config_from_dict`,
    with the keys in ADDED_KEYS that it lacks set to what the run used."""
    if isinstance(raw, dict):
        raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
        for (section, key), value in ADDED_KEYS.items():
            if isinstance(raw.get(section), dict):
                raw[section].setdefault(key, value)
    return config_from_dict(raw, source=source)


def load_saved_config(path: str | Path) -> RunConfig:
    """Read a run folder's config.yaml (see `saved_config_from_dict`)."""
    return saved_config_from_dict(read_yaml(path), source=str(path))


def _hash(raw: dict) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:10]


def run_id(config: RunConfig) -> str:
    """A short stable id of a resolved config: the first 10 hex digits of the SHA-256 of its
    key-sorted JSON, leaving out keys added later that hold the value runs had before them
    (ADDED_KEYS). Training stores it in checkpoints; the experiment runner names folders by it."""
    return run_ids(config)[0]


def run_ids(config: RunConfig) -> tuple[str, ...]:
    """`run_id` first, then the ids the same config had while only the first k keys of ADDED_KEYS
    existed (k = 1 …): a run made then hashed those keys with whatever value they held, and lacked
    the later ones. Finding a run folder tries them in order, so the reports of runs made before a
    key was added still find their folders."""
    raw = config.to_dict()
    added = list(ADDED_KEYS.items())
    ids = [_hash({s: {k: v for k, v in values.items() if ADDED_KEYS.get((s, k), ...) != v}
                  for s, values in raw.items()})]
    for era in range(1, len(added)):
        later = added[era:]
        if any(raw[section].get(key) != value for (section, key), value in later):
            continue  # the config holds a value a key could not have had before it existed
        trimmed = {s: {k: v for k, v in values.items() if (s, k) not in dict(later)} for s, values in raw.items()}
        if (identifier := _hash(trimmed)) not in ids:
            ids.append(identifier)
    return tuple(ids)
