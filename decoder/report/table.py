"""The experiment report's tables: summary.csv (one row per run), summary.md (one row per
configuration, mean ± std over seeds, with the Kneser-Ney baselines on the same split) and
samples.md (every run's continuations with the share memorised from the training split).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Iterable

from decoder.config import DataConfig
from decoder.experiments.grid import SEED_KEY, setting_text, settings_label
from decoder.metrics import perplexity
from decoder.report import markdown
from decoder.runs import RunDir, RunRecord, flat_settings, seeds_vary, varied_keys

NGRAM = 8  # memorisation: share of the sample's 8-token n-grams found verbatim in the training split

# Columns of summary.csv after experiment, run_id, status and the varied keys.
REPORT_COLUMNS = (
    "seed", "params_total", "params_non_embedding", "tokens_seen", "steps", "elapsed_s", "tokens_per_s",
    "best_val_loss", "best_val_ppl", "best_val_bpb", "final_val_loss", "final_val_ppl", "final_val_bpb",
    "train_loss_at_best", "error", "run_dir",
)
_INT_COLUMNS = ("seed", "params_total", "params_non_embedding", "tokens_seen", "steps")
PROTOCOL_COLUMNS = {"sliding_val_bpb": "sliding", "dynamic_val_bpb": "dynamic", "mix_val_bpb": "mix",
                    "knn_mix_val_bpb": "knn-mix"}
"""Bits per byte of the best checkpoint under `training.final_protocols` (static is best_val_bpb);
summary.csv and summary.md carry a column only when some run has it."""

def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def record_row(record: RunRecord, keys: list[str]) -> dict[str, Any]:
    """One row of summary.csv; numbers from summary.json, else from metrics.jsonl (unfinished runs)."""
    s, m = record.summary, record.metrics
    flat = flat_settings(record.config)
    best = min((r for r in m if _finite(r.get("val_loss")) is not None), key=lambda r: r["val_loss"], default={})
    last = m[-1] if m else {}
    tokens, elapsed = s.get("tokens_seen", last.get("tokens_seen")), s.get("elapsed_s", last.get("elapsed_s"))
    best_loss = s.get("best_val_loss", best.get("val_loss"))
    row = {"experiment": record.experiment, "run_id": record.run_dir.name, "status": record.status}
    row.update({k: flat.get(k) for k in keys})
    row.update({
        "seed": flat.get(SEED_KEY),
        "params_total": s.get("params_total"),
        "params_non_embedding": s.get("params_non_embedding"),
        "tokens_seen": tokens,
        "steps": s.get("step", last.get("step")),
        "elapsed_s": elapsed,
        "tokens_per_s": s.get("tokens_per_s") or (tokens / elapsed if tokens and elapsed else None),
        "best_val_loss": best_loss,
        "best_val_ppl": perplexity(best_loss) if _finite(best_loss) is not None else None,
        "best_val_bpb": s.get("best_val_bpb", best.get("val_bpb")),
        "final_val_loss": s.get("final_val_loss", last.get("val_loss")),
        "final_val_ppl": s.get("final_val_ppl", last.get("val_ppl")),
        "final_val_bpb": s.get("final_val_bpb", last.get("val_bpb")),
        "train_loss_at_best": s.get("train_loss_at_best", best.get("train_loss")),
        "error": record.error,
        "run_dir": str(record.run_dir),
    })
    protocols = s.get("protocols") or {}
    row.update({column: protocols[name]["bits_per_byte"] for column, name in PROTOCOL_COLUMNS.items()
                if name in protocols})
    return row


def summary_frame(records: list[RunRecord]):
    """summary.csv as a pandas DataFrame (integer columns nullable)."""
    import pandas as pd

    keys = varied_keys(records)
    rows = [record_row(r, keys) for r in records]
    protocols = [c for c in PROTOCOL_COLUMNS if any(c in row for row in rows)]
    frame = pd.DataFrame(rows, columns=["experiment", "run_id", "status", *keys, *REPORT_COLUMNS, *protocols])
    for column in protocols:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    for key in keys:  # settings as written (512 stays 512 beside a null, not 512.0)
        frame[key] = pd.Series([row[key] for row in rows], dtype=object)
    for column in _INT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    for column in REPORT_COLUMNS:
        if column not in _INT_COLUMNS and column not in ("error", "run_dir"):
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    return frame.sort_values("best_val_bpb", na_position="last", kind="stable").reset_index(drop=True)


@dataclass
class Group:
    """Runs of one configuration (all seeds): what a row of summary.md shows."""

    experiment: str
    settings: dict[str, Any]
    rows: list[dict]

    @property
    def scored(self) -> list[dict]:
        return [r for r in self.rows if _finite(r["best_val_bpb"]) is not None]

    def mean_std(self, column: str) -> tuple[float | None, float | None]:
        values = [_finite(r[column]) for r in self.scored]
        values = [v for v in values if v is not None]
        if not values:
            return None, None
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
        return mean, std

    @property
    def label(self) -> str:
        return settings_label(self.settings)


def group_runs(frame, keys: list[str]) -> list[Group]:
    """Rows grouped by experiment and varied settings, ranked by mean best val bpb (unscored last)."""
    groups: dict[str, Group] = {}
    for row in frame.to_dict("records"):
        settings = {k: _plain(row[k]) for k in keys}
        ident = json.dumps([row["experiment"], settings], default=str)
        groups.setdefault(ident, Group(row["experiment"], settings, [])).rows.append(row)
    return sorted(groups.values(), key=lambda g: (g.mean_std("best_val_bpb")[0] is None,
                                                  g.mean_std("best_val_bpb")[0] or 0.0))


def _plain(value: Any) -> Any:
    """pandas' missing values (NaN, NA) as None, numpy scalars as Python ones."""
    try:
        import pandas as pd

        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value.item() if hasattr(value, "item") else value




def baselines(records: list[RunRecord]) -> list[dict]:
    """Kneser-Ney bigram and trigram on each distinct data config of the runs, then the
    compressors (`decoder.compressors`) on each distinct validation text (min_count and the
    fallback change the ids, not the bytes). Each row has a `kind`: "n-gram" or "compressor"."""
    from decoder.baseline import kn_baseline
    from decoder.compressors import compressor_baselines
    from decoder.data import DataError
    from decoder.tokenizer import TokenizerError

    # The training-window scheme does not change the splits, so it does not make another baseline.
    datas = list(dict.fromkeys(dataclasses.replace(r.config.data, windows="random")
                               for r in records if r.config is not None))
    out = []
    for data in datas:
        for order, name in ((2, "KN bigram"), (3, "KN trigram")):
            try:
                result = kn_baseline(data, order)
            except (DataError, TokenizerError) as exc:
                out.append({"name": name, "kind": "n-gram", "data": data, "error": str(exc)})
                continue
            out.append({"name": name, "kind": "n-gram", "data": data, **result})
    texts: dict[tuple, DataConfig] = {}
    for data in datas:
        texts.setdefault((tuple(data.corpora), data.tokenizer, data.val_fraction), data)
    for data in texts.values():
        try:
            rows = compressor_baselines(data)
        except (DataError, TokenizerError) as exc:
            rows = [{"name": "compressors", "error": str(exc)}]
        out += [{**row, "kind": "compressor", "data": data} for row in rows]
    return out


def _ngram_keys(ids: Iterable[int], n: int) -> list[bytes]:
    """The n-grams of `ids` in order, each as the bytes of its int64 ids."""
    import numpy as np

    ids = np.ascontiguousarray(np.asarray(ids if hasattr(ids, "__len__") else list(ids), dtype=np.int64))
    if len(ids) < n:
        return []
    windows = np.ascontiguousarray(np.lib.stride_tricks.sliding_window_view(ids, n))
    return windows.view(np.dtype((np.void, 8 * n))).ravel().tolist()


def ngram_set(tokens: Iterable[int], n: int = NGRAM) -> set[bytes]:
    """Every n-gram of a token stream (for verbatim membership tests with `memorisation`)."""
    return set(_ngram_keys(tokens, n))


def memorisation(ids: Iterable[int], train_ngrams: set[bytes], n: int = NGRAM) -> float | None:
    """Share of the n-grams of `ids` that occur verbatim in the training split (whose n-grams are
    `train_ngrams`, from ngram_set); None when `ids` has fewer than n tokens."""
    grams = _ngram_keys(ids, n)
    if not grams:
        return None
    return sum(g in train_ngrams for g in grams) / len(grams)


def repeated_spans(ids: Iterable[int], n: int = NGRAM, window: int = 100) -> int | None:
    """How many n-token spans of `ids` repeat an earlier span that started fewer than `window`
    tokens before (0 = the text does not loop); None when `ids` has fewer than n tokens."""
    grams = _ngram_keys(ids, n)
    if not grams:
        return None
    last: dict[bytes, int] = {}
    count = 0
    for i, gram in enumerate(grams):
        if gram in last and i - last[gram] < window:
            count += 1
        last[gram] = i
    return count




def _mean_cell(group: Group, column: str, kind: str = "float") -> str:
    """The mean over the group's scored runs, with ± sample std when they differ."""
    mean, std = group.mean_std(column)
    if mean is None:
        return ""
    return markdown.number(mean, kind) + (f" ± {markdown.number(std, kind)}" if std else "")


def _status_cell(group: Group) -> str:
    counts: dict[str, int] = {}
    for row in group.rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return ", ".join(f"{n}× {s}" if len(group.rows) > 1 else s for s, n in counts.items())


def summary_markdown(name: str, frame, keys: list[str], bases: list[dict], *, command: str,
                     description: str = "") -> str:
    """summary.md: one row per configuration ranked by val bpb, mean ± std over seeds, baselines."""
    groups = group_runs(frame, keys)
    many = len({g.experiment for g in groups}) > 1
    header = [""] + (["experiment"] if many else []) + keys + [
        "runs", "params", "non-emb params", "tokens seen", "train s", "tokens/s", "val loss", "val ppl",
        "val bpb", "final val bpb", "train loss at best"] + [
        f"{PROTOCOL_COLUMNS[c]} bpb" for c in PROTOCOL_COLUMNS if c in frame.columns] + ["status"]
    protocols = [c for c in PROTOCOL_COLUMNS if c in frame.columns]
    best = next((g for g in groups if g.scored), None)
    ranked: list[tuple[float, list[str]]] = []
    for g in groups:
        mark = "**best**" if g is best else ""
        cells = [mark] + ([g.experiment] if many else []) + [setting_text(g.settings[k]) for k in keys] + [
            str(len(g.rows)), _mean_cell(g, "params_total", "count"), _mean_cell(g, "params_non_embedding", "count"),
            _mean_cell(g, "tokens_seen", "count"), _mean_cell(g, "elapsed_s", "seconds"),
            _mean_cell(g, "tokens_per_s", "int"), _mean_cell(g, "best_val_loss"), _mean_cell(g, "best_val_ppl", "ppl"),
            _mean_cell(g, "best_val_bpb"), _mean_cell(g, "final_val_bpb"), _mean_cell(g, "train_loss_at_best"),
            *[_mean_cell(g, c) for c in protocols], _status_cell(g)]
        mean = g.mean_std("best_val_bpb")[0]
        ranked.append((mean if mean is not None else math.inf, cells))
    for b in bases:
        if "val_bpb" not in b:
            continue
        data = b["data"]
        ids = f"min_count {data.min_count}, {data.fallback}" if data.compact_vocab else "full vocabulary"
        where = f" ({data.tokenizer}, {data.corpus}, {ids})" if many_data(bases) else f" ({ids})"
        if b.get("kind") == "compressor":  # the same bytes whatever the vocabulary
            where = f" ({data.tokenizer}, {data.corpus})" if many_data(bases) else ""
        numbers = [markdown.number(b["val_loss"]), markdown.number(b["val_ppl"], "ppl"), markdown.number(b["val_bpb"]),
                   "", "", *[""] * len(protocols), b.get("kind", "n-gram")]
        cells = [f"baseline: {b['name']}{where}"] + [""] * (len(header) - 1 - len(numbers)) + numbers
        ranked.append((b["val_bpb"], cells))
    ranked.sort(key=lambda item: item[0])
    lines = [f"# {name}", ""]
    if description:
        lines += [description.strip(), ""]
    lines += [
        f"Regenerate: `{command}`", "",
        "Ranked by best validation bits per byte (lower is better); with repeated seeds each cell is "
        "mean ± std (sample std) over the runs of that configuration. 'train s' is training time "
        "without evaluation. The baselines are interpolated Kneser-Ney n-gram models fitted on the "
        "same training split and scored on the same validation tokens (the same ids: min_count is the "
        "compact vocabulary's, then how it spells the tokens it dropped; see research/vocabulary/min-count/).", "",
        markdown.table(header, [cells for _, cells in ranked]), "",
    ]
    lines += [f"- {b['name']} baseline unavailable: {b['error']}" for b in bases if "error" in b]
    if protocols:
        lines += ["- " + ", ".join(f"'{PROTOCOL_COLUMNS[c]} bpb'" for c in protocols) + ": the best checkpoint scored "
                  "on the same validation tokens under that evaluation protocol (`decoder eval --protocol NAME` with "
                  "its defaults; docs/evaluation.md); 'val bpb' is the static protocol, the training metric."]
    tools = dict.fromkeys(f"{b['name']} ({b['tool']})" for b in bases if b.get("kind") == "compressor" and "tool" in b)
    if tools:
        lines += [f"- Compressor baselines: {', '.join(tools)}; the cost of the validation bytes given the training "
                  "text, 8 (size(train + val) - size(train)) / val bytes, on the bytes the model is scored on; val "
                  "loss and ppl spread that cost over the model's validation tokens."]
    lines += _machine_lines(frame)
    return "\n".join(lines).rstrip() + "\n"


def many_data(bases: list[dict]) -> bool:
    """Whether the baselines cover more than one data config (then each is labelled with its data)."""
    return len({repr(b["data"]) for b in bases}) > 1


def _machine_lines(frame) -> list[str]:
    summaries = [RunDir(d).read_summary() or {} for d in frame["run_dir"]]
    seen = dict.fromkeys(f"{s.get('cpu')}, device {s.get('device')}, precision {s.get('precision')}, torch "
                         f"{s.get('torch')}" for s in summaries if s.get("device"))
    return [""] + [f"Trained on: {m}" for m in seen] if seen else []


def samples_markdown(name: str, records: list[RunRecord], *, command: str) -> str:
    """samples.md: the greedy and the sampled continuation of every run, with memorisation."""
    from decoder.data import prepare

    train_sets: dict[DataConfig, Any] = {}
    keys = varied_keys(records)
    seeds = seeds_vary(records)
    lines = [f"# {name}: samples", "", f"Regenerate: `{command}`", "",
             f"Memorised: the share of the continuation's {NGRAM}-token n-grams that occur verbatim in the "
             f"training split (100% = recited from the book). Repeats: the continuation's {NGRAM}-token spans "
             "that repeat one started fewer than 100 tokens before (0 = no loop).", ""]
    for record in records:
        if not record.samples or record.config is None:
            continue
        data = record.config.data
        if data not in train_sets:
            dataset = prepare(data)
            train_sets[data] = (dataset.tokenizer, ngram_set(dataset.train))
        tokenizer, grams = train_sets[data]
        flat = flat_settings(record.config)
        title = settings_label({k: flat.get(k) for k in keys + ([SEED_KEY] if seeds else [])})
        lines += [f"## {record.experiment}: {title}", "", f"Run `{record.run_dir}`, prompt: "
                  f"`{record.samples[0].get('prompt', '')}`", ""]
        for sample in record.samples:
            ids = tokenizer.encode(sample["text"])
            share, repeats = memorisation(ids, grams), repeated_spans(ids)
            figure = f"{share:.0%}" if share is not None else f"n/a (< {NGRAM} tokens)"
            repeated = repeats if repeats is not None else "n/a"
            lines += [f"**{sample['strategy']}** (memorised: {figure}, repeats: {repeated})", "", "```text",
                      sample["prompt"] + sample["text"], "```", ""]
    return "\n".join(lines).rstrip() + "\n"
