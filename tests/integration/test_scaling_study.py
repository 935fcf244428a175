"""A scaling study end to end on a tiny grid: `decoder run` trains the grid over
training.max_flops, predicts the best shape at a larger budget (written down before it is
trained), trains it, and `decoder report` writes the IsoFLOP report with predicted vs measured."""

from __future__ import annotations

import json

import yaml

import decoder.scaling_study
from decoder.cli import main


def test_scaling_study_predicts_runs_and_reports(tmp_path, small_corpus, capsys, monkeypatch):
    monkeypatch.setattr(decoder.scaling_study, "BOOTSTRAP_ROUNDS", 8)  # intervals from a few refits: quick
    raw = {
        "name": "tinyscaling",
        "base": {
            "model": {"n_heads": 2, "n_blocks": 1, "context_length": 16},
            "data": {"corpus": str(small_corpus), "tokenizer": "gpt2"},
            "training": {"batch_size": 8, "warmup_fraction": 0.1, "eval_fraction": 1.0, "device": "cpu",
                         "precision": "fp32", "lr": 3e-3, "num_threads": 1, "tensorboard": False},
            "sampling": {"max_new_tokens": 4},
        },
        "seeds": [0, 1],
        "grid": {"training.max_flops": [1.0e+8, 3.0e+8]},
        "zip": [{"model.d_model": [16, 24, 32, 32], "model.n_heads": [2, 2, 2, 4]}],
        "exclude": [{"training.max_flops": 1.0e+8, "model.n_heads": 4}],
        "predict": {"factor": 2, "seeds": [0]},
    }
    path = tmp_path / "tinyscaling.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    runs, out = tmp_path / "runs", tmp_path / "results"
    assert main(["run", str(path), "--workers", "2", "--quiet", "--runs-dir", str(runs), "--out", str(out)]) == 0
    prediction = json.loads((runs / "tinyscaling" / "prediction.json").read_text())
    assert prediction["budget"] == 6e8 and prediction["fitted_runs"] == 14
    assert prediction["holdout"] == [] and prediction["method"]  # two budgets: too few to hold one out
    assert prediction["interval"][0] <= prediction["predicted_bpb"] <= prediction["interval"][1]
    assert {c["d_model"] for c in prediction["candidates"]} == {16, 24, 32}
    assert "predicted best shape" in capsys.readouterr().out

    # Running again keeps the prediction made before the point was trained and trains nothing.
    assert main(["run", str(path), "--workers", "2", "--quiet", "--runs-dir", str(runs), "--out", str(out)]) == 0
    assert "prediction made" in capsys.readouterr().out
    assert json.loads((runs / "tinyscaling" / "prediction.json").read_text()) == prediction
    assert len(prediction["grid_runs"]) == 14

    # A prediction fitted to other grid runs (a changed grid) is not reused: it is made again.
    stale = {**prediction, "grid_runs": prediction["grid_runs"][1:], "predicted_bpb": 99.0}
    (runs / "tinyscaling" / "prediction.json").write_text(json.dumps(stale))
    assert main(["run", str(path), "--workers", "2", "--quiet", "--runs-dir", str(runs), "--out", str(out)]) == 0
    assert "predicting again" in capsys.readouterr().out
    remade = json.loads((runs / "tinyscaling" / "prediction.json").read_text())
    assert remade["grid_runs"] == prediction["grid_runs"] and remade["predicted_bpb"] != 99.0

    report = (out / "tinyscaling" / "scaling.md").read_text()
    for part in ("## IsoFLOP curves", "## Heads at fixed N", "## Fitted laws", "## Choosing the prediction method",
                 "Too few budgets with an interior minimum for a holdout", "## Prediction", "measured − predicted",
                 "summed over 15 runs"):
        assert part in report, part
    assert (out / "tinyscaling" / "isoflop.png").stat().st_size > 10_000
    assert (out / "tinyscaling" / "fit.png").is_file()
    rows = (out / "tinyscaling" / "scaling.csv").read_text().splitlines()
    assert len(rows) == 1 + 14 + 1  # header, the grid's runs, the prediction's one seed
