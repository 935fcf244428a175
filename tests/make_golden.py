"""Regenerate tests/assets/golden_losses.json (deliberately, with the reason in the commit message)."""

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from tinyconf import tiny_config  # noqa: E402
from decoder.data import load_corpus  # noqa: E402
from decoder.train import train  # noqa: E402

with tempfile.TemporaryDirectory() as tmp:
    corpus = Path(tmp) / "small.txt"
    corpus.write_text(load_corpus("mysterious-island")[20_000:60_000], encoding="utf-8")
    config = tiny_config(corpus, training={"max_steps": 20})
    losses: list[float] = []
    train(config, Path(tmp) / "run", quiet=True, on_step=lambda step, m: losses.append(m["train_loss"]) and False)
out = Path(__file__).parent / "assets" / "golden_losses.json"
out.write_text(json.dumps({"config": config.to_dict()["model"], "losses": losses}, indent=1) + "\n")
print(f"wrote {len(losses)} losses to {out}")
