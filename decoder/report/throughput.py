"""`decoder bench`: the throughput report from pytest-benchmark JSON files, and running the suite.

Reads one or more files of the bench/ suites (e.g. one from a CPU machine, one from a GPU machine;
see `decoder.report.throughput_table` for how they merge) and writes:

- `throughput.csv` / `throughput.md`: one row per (workload, model, engine, precision, batch):
  tokens/s on CPU and on CUDA, the CUDA/CPU ratio, MFU and, for generation, the share reached of
  the memory-bandwidth bound; plus the comparisons checked against targets (`Targets`);
- `throughput.png`: the tokens/s of every row, CPU and CUDA side by side, log scale.
"""

from __future__ import annotations

import csv
import io
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from decoder.io import atomic_write
from decoder.report import markdown, plots
from decoder.report.throughput_table import (COLUMNS, DEVICES, BenchReportError, Source, build_table, comparisons,
                                             device_sources)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    return round(value, 6) if isinstance(value, float) else value


def table_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    return buffer.getvalue()


def _num(value: float | None) -> str:
    return markdown.number(value, "sig", missing="—")


def _pct(value: float | None) -> str:
    return markdown.number(value, "percent", missing="—")


def _times(value: float | None) -> str:
    return markdown.number(value, "times", missing="—")


def _limits_table(sources: dict[str, list[Source]]) -> str:
    lines = []
    for device in DEVICES:
        if device not in sources:
            lines.append([device.upper(), "not measured", "—", "—", "—", "—"])
        for s in sources.get(device, []):
            lines.append(_limits_line(s))
    return markdown.table(["column", "machine", "matmul fp32 TFLOP/s", "matmul bf16 TFLOP/s", "read GB/s", "file"],
                          lines)


def _limits_line(s: Source) -> list[str]:
    peak = {p: (f"{s.matmul_peak[p] / 1e12:.3g}" if p in s.matmul_peak else "—") for p in ("fp32", "bf16")}
    bw = f"{s.read_bandwidth / 1e9:.3g}" if s.read_bandwidth else "—"
    return [s.device.upper(), s.machine, peak["fp32"], peak["bf16"], bw, f"`{s.path}`"]


def _row_lines(rows: list[dict]) -> list[list[str]]:
    return [[
        r["workload"], str(r["model"]), r["engine"], r["precision"], str(r["batch"]),
        _num(r["cpu_tokens_per_s"]), _num(r["cuda_tokens_per_s"]), _times(r["cuda_over_cpu"]),
        _pct(r["cpu_mfu"]), _pct(r["cuda_mfu"]),
        _bound(r["cpu_of_bw_bound"], r["cpu_bw_bound_tokens_per_s"]),
        _bound(r["cuda_of_bw_bound"], r["cuda_bw_bound_tokens_per_s"]),
    ] for r in rows]


def _bound(share: float | None, bound: float | None) -> str:
    return "—" if share is None else f"{_pct(share)} of {_num(bound)}"


def _comparison_lines(comps: list[dict]) -> list[list[str]]:
    lines = []
    for c in comps:
        fmt = _pct if c["kind"] in ("mfu", "bw_bound") else _times
        target = "—" if c["target"] is None else f"≥ {fmt(c['target'])}"
        met = "—" if c["met"] is None else ("yes" if c["met"] else "**no**")
        lines.append([c["compares"], c["comparison"], c["device"], fmt(c["value"]), target, met])
    return lines


def table_markdown(rows: list[dict], comps: list[dict], sources: dict[str, list[Source]], command: str) -> str:
    parts = [
        "# Throughput: tokens per second on CPU and CUDA",
        "",
        f"Made by `{command}` from pytest-benchmark medians (warm-up excluded, device synchronised). "
        "Each column comes from one machine; \"—\" means not measured.",
        "",
        "## Machines and their measured limits",
        "",
        _limits_table(sources),
        "",
        "## Throughput",
        "",
        "Tokens/s: training counts the tokens of a step (forward + backward + optimizer), prefill the "
        "tokens of a full-context forward pass, generation the new tokens (batch x 128 after a 16-token "
        "prompt, prompt processing included). MFU: FLOPs per token (6N + attention for training, a third "
        "of that for prefill) x tokens/s over the measured matmul peak of the same precision. "
        "Bandwidth bound (generation): batch x read bandwidth / weight bytes, as each decoding step "
        "streams every weight once; shown as the share reached of that bound.",
        "",
        markdown.table(["workload", "model", "engine", "precision", "batch", "CPU tok/s", "CUDA tok/s", "CUDA/CPU",
                    "MFU CPU", "MFU CUDA", "bw bound CPU", "bw bound CUDA"], _row_lines(rows)),
        "",
        "## Targets",
        "",
        markdown.table(["compares", "comparison", "device", "value", "target", "met"], _comparison_lines(comps)),
        "",
    ]
    return "\n".join(parts)


def row_label(row: dict) -> str:
    return f"{row['workload']} · {row['model']} · {row['engine']} · {row['precision']} · b{row['batch']}"


def write_report(json_paths: list[str | Path], out_dir: str | Path, command: str = "decoder bench") -> dict[str, Path]:
    """Read the benchmark files and write throughput.csv, throughput.md and throughput.png to out_dir."""
    sources = device_sources(list(json_paths))
    rows = build_table(sources)
    if not rows:
        raise BenchReportError(f"{', '.join(map(str, json_paths))}: no training, prefill or generation benchmarks")
    out = Path(out_dir)
    paths = {"csv": out / "throughput.csv", "md": out / "throughput.md", "png": out / "throughput.png"}
    atomic_write(paths["csv"], table_csv(rows))
    atomic_write(paths["md"], table_markdown(rows, comparisons(rows), sources, command))
    tokens_per_s = {device: [r[f"{device}_tokens_per_s"] for r in rows] for device in DEVICES}
    atomic_write(paths["png"], plots.throughput_png([row_label(r) for r in rows], tokens_per_s))
    return paths


def run_suite(bench_dir: str | Path, out_dir: str | Path, pytest_args: list[str] | None = None) -> Path:
    """Run the pytest-benchmark suites in `bench_dir` (the repository's bench/) timed in a subprocess
    from the folder above it; returns its JSON (OUT/throughput.cpu.json, or .cuda.json on a machine
    with a GPU, whose file then holds both columns)."""
    import torch

    bench_dir = Path(bench_dir).resolve()
    if not (bench_dir / "conftest.py").is_file():
        raise BenchReportError(f"{bench_dir}: no benchmark suites there; --run needs a source checkout: run it "
                               "from the repository root, where bench/ is")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"throughput.{'cuda' if torch.cuda.is_available() else 'cpu'}.json"
    command = [sys.executable, "-m", "pytest", str(bench_dir), "--benchmark-only",
               f"--benchmark-json={json_path.resolve()}", "-p", "no:cacheprovider", *(pytest_args or [])]
    print("running:", shlex.join(command), file=sys.stderr)
    code = subprocess.run(command, cwd=bench_dir.parent).returncode
    if code != 0:
        raise BenchReportError(f"the benchmark suite failed (pytest exit status {code}); see its output above")
    return json_path
