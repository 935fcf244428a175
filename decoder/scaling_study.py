"""An IsoFLOP study's runs as a table, and the fits made from it (`decoder.scaling_fit`): what the
prediction step (`decoder.scaling_predict`) and the report (`decoder.report.scaling`) share.

One row per finished run: its budget (training.max_flops), shape, seed, N (`decoder.flops.matmul_params`),
D (tokens seen), C (FLOPs spent), and its final validation bits per byte (the one evaluation at
the end of the budget). The fits are to bits per byte: a loss in bits of the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from decoder.experiments.predict import BUDGET_KEY
from decoder.flops import flops_per_token, matmul_params
from decoder.runs import DONE, RunRecord
from decoder.scaling_fit import Bootstrap, Law, bootstrap, fit_law

SHAPE = ["d_model", "n_heads", "n_blocks"]
BOOTSTRAP_ROUNDS = 200
LEVEL = 0.9
"""Bootstrap intervals are central 90% intervals."""


def study_frame(records: list[RunRecord]) -> pd.DataFrame:
    """One row per finished run that has a FLOP budget and a final evaluation."""
    rows = []
    for r in records:
        s, c = r.summary, r.config
        if r.status not in DONE or c is None or c.training.max_flops is None or s.get("final_val_bpb") is None:
            continue
        vocab = s["vocab_size"]
        rows.append({"budget": c.training.max_flops, "d_model": c.model.d_model, "n_heads": c.model.n_heads,
                     "n_blocks": c.model.n_blocks, "seed": c.training.seed, "N": matmul_params(c.model, vocab),
                     "D": s["tokens_seen"], "C": s["tokens_seen"] * flops_per_token(c.model, vocab),
                     "flops_per_token": flops_per_token(c.model, vocab), "bpb": s["final_val_bpb"],
                     "run": r.run_dir.name})
    return pd.DataFrame(rows, columns=["budget", *SHAPE, "seed", "N", "D", "C", "flops_per_token", "bpb", "run"])


@dataclass(frozen=True)
class StudyFit:
    """The plain and (when the runs repeat data) data-constrained laws with their bootstraps."""

    law: Law
    boot: Bootstrap
    constrained: Law | None
    constrained_boot: Bootstrap | None
    unique: float

    @property
    def primary(self) -> tuple[str, Law, Bootstrap]:
        """The law fit.png shows: the data-constrained one where it was fitted (the prediction's
        method is chosen by `decoder.scaling_holdout`)."""
        if self.constrained is not None:
            return "data-constrained", self.constrained, self.constrained_boot
        return "L(N, D)", self.law, self.boot


def fit_study(frame: pd.DataFrame, unique: float, *, rounds: int | None = None) -> StudyFit:
    """Fit both laws to the runs (the constrained one only when some run saw more than one epoch
    of the `unique` training tokens), with bootstraps over the runs."""
    rounds = rounds or BOOTSTRAP_ROUNDS
    n, d, y = frame["N"].to_numpy(float), frame["D"].to_numpy(float), frame["bpb"].to_numpy(float)
    law = fit_law(n, d, y)
    boot = bootstrap(law, n, d, y, rounds=rounds)
    constrained = constrained_boot = None
    if (d > unique).any():
        constrained = fit_law(n, d, y, unique=unique)
        constrained_boot = bootstrap(constrained, n, d, y, rounds=rounds)
    return StudyFit(law, boot, constrained, constrained_boot, unique)


def shapes(frame: pd.DataFrame) -> pd.DataFrame:
    """The distinct shapes of the runs with their N and FLOPs per token, by N."""
    return frame.drop_duplicates(SHAPE)[[*SHAPE, "N", "flops_per_token"]].sort_values("N").reset_index(drop=True)


def main_shapes(frame: pd.DataFrame) -> pd.Series:
    """A mask of the runs on the IsoFLOP curves: for each (d_model, n_blocks) the head count that
    runs at the most budgets; the other head counts are the heads-only axis (`heads_axis`)."""
    spread = frame.groupby(["d_model", "n_blocks", "n_heads"])["budget"].nunique().reset_index()
    main = spread.sort_values("budget", ascending=False).drop_duplicates(["d_model", "n_blocks"])
    keys = set(zip(main["d_model"], main["n_blocks"], main["n_heads"]))
    return pd.Series([k in keys for k in zip(frame["d_model"], frame["n_blocks"], frame["n_heads"])], index=frame.index)


def heads_axis(frame: pd.DataFrame) -> pd.DataFrame:
    """The runs of every (budget, d_model, n_blocks) tried with more than one head count: shapes
    of equal N and equal tokens that differ in heads alone."""
    counts = frame.groupby(["budget", "d_model", "n_blocks"])["n_heads"].transform("nunique")
    return frame[counts > 1]


def budgets(frame: pd.DataFrame) -> list[float]:
    return sorted(frame["budget"].unique().tolist())


def unique_tokens(records: list[RunRecord]) -> int:
    """Tokens in the training split of the study's data (one epoch), prepared as training does."""
    from decoder.data import prepare

    config = next(r.config for r in records if r.config is not None)
    return len(prepare(config.data).train)


__all__ = ["BUDGET_KEY", "StudyFit", "budgets", "fit_study", "heads_axis", "main_shapes",
           "shapes", "study_frame", "unique_tokens"]
