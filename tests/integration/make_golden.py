"""Regenerate tests/assets/golden_losses.json (deliberately, with the reason in the commit message):
the runs of tests/integration/test_golden_losses.py, on the excerpt in tests/assets.

The file holds the default run (`config`: its model section, `losses`: its training losses) and,
under `variants`, one run per architecture option (`sections`: the config overrides, `losses` and
`val_losses`: the training losses and the validation losses of its evaluations; the moving average
of training.ema changes only the latter).

usage: python tests/integration/make_golden.py
"""

import json
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

from tinyconf import tiny_config, train_losses  # noqa: E402

VARIANTS = {
    "rope": {"model": {"positional": "rope"}},
    "rmsnorm": {"model": {"norm": "rmsnorm"}},
    "relu2": {"model": {"mlp": "relu2"}},
    "swiglu": {"model": {"mlp": "swiglu"}},
    "qk_norm": {"model": {"qk_norm": True}},
    "ema": {"training": {"ema": 0.9}},
}


def golden_run(corpus: Path, run_dir: Path, sections: dict) -> tuple[dict, list[float], list[float]]:
    """(config, training losses, validation losses) of the golden run with `sections` overridden."""
    training = {"max_steps": 20, **sections.get("training", {})}
    config = tiny_config(corpus, **{**sections, "training": training})
    losses = train_losses(config, run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return config, losses, [row["val_loss"] for row in rows]


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "small.txt"
        corpus.write_text((TESTS / "assets" / "excerpt.txt").read_text(encoding="utf-8"), encoding="utf-8")
        config, losses, _ = golden_run(corpus, Path(tmp) / "run", {})
        variants = {}
        for name, sections in VARIANTS.items():
            _, v_losses, v_val = golden_run(corpus, Path(tmp) / name, sections)
            variants[name] = {"sections": sections, "losses": v_losses, "val_losses": v_val}
    out = TESTS / "assets" / "golden_losses.json"
    golden = {"config": config.to_dict()["model"], "losses": losses, "variants": variants}
    out.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {len(losses)} losses and {len(variants)} variants to {out}")
