"""Regenerate tests/assets/golden_losses.json (deliberately, with the reason in the commit message):
the run of tests/integration/test_golden_losses.py, on the excerpt in tests/assets.

usage: python tests/integration/make_golden.py
"""

import json
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

from tinyconf import tiny_config, train_losses  # noqa: E402

with tempfile.TemporaryDirectory() as tmp:
    corpus = Path(tmp) / "small.txt"
    corpus.write_text((TESTS / "assets" / "excerpt.txt").read_text(encoding="utf-8"), encoding="utf-8")
    config = tiny_config(corpus, training={"max_steps": 20})
    losses = train_losses(config, Path(tmp) / "run")
out = TESTS / "assets" / "golden_losses.json"
out.write_text(json.dumps({"config": config.to_dict()["model"], "losses": losses}, indent=1) + "\n")
print(f"wrote {len(losses)} losses to {out}")
