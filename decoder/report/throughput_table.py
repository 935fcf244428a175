"""pytest-benchmark JSON files -> the rows of the CPU-vs-CUDA throughput table and the comparisons
checked against targets (written out by `decoder.report.throughput`).

The suites under bench/ store, with every benchmark, what turns its median time into a figure
(`extra_info`: workload, model, engine, precision, batch, device, tokens per call, and FLOPs per
call or weight bytes per decoding step) and the machine in `machine_info["decoder"]`. A row is one
(workload, model, engine, precision, batch): tokens/s on CPU and on CUDA, the CUDA/CPU ratio, MFU
(achieved FLOP/s over the matmul peak measured on the same machine and device in the same
precision), and for generation the memory-bandwidth bound (batch x read bandwidth / weight bytes:
each decoding step streams every weight once) and the share of it reached.

Each device column comes from one machine: the first file given that measured the device sets
it; later files add rows to it only when measured on the same machine (same CPU model and
threads, or the same GPU: a suite run in parts); a row measured twice keeps the first figure.
MFU and the bandwidth bound of a row use the limits measured in the row's own file (else in
another file of the same machine), so a figure and its limits always come from the same machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from decoder.errors import UserError
from decoder.io import FileFormatError, read_json

DEVICES = ("cpu", "cuda")
WORKLOADS = ("train", "prefill", "generate")
KEY_FIELDS = ("workload", "model", "engine", "precision", "batch")
COLUMNS = (
    *KEY_FIELDS,
    "cpu_tokens_per_s", "cuda_tokens_per_s", "cuda_over_cpu", "cpu_mfu", "cuda_mfu",
    "cpu_bw_bound_tokens_per_s", "cuda_bw_bound_tokens_per_s", "cpu_of_bw_bound", "cuda_of_bw_bound",
    "cpu_machine", "cuda_machine",
)
# extra_info keys each workload must carry (the bench/ suites write them).
REQUIRED = {
    **{w: ("model", "engine", "precision", "batch", "tokens") for w in WORKLOADS},
    "matmul": ("precision", "flops"),
    "bandwidth": ("bytes",),
}

RowKey = tuple  # (workload, model, engine, precision, batch)


class BenchReportError(UserError, ValueError):
    """Benchmark files that cannot be read or reported, or a suite run that failed."""


@dataclass(frozen=True)
class Source:
    """One device column: the figures one file measured on one device, with that device's limits."""

    path: Path
    device: str
    machine: str
    matmul_peak: dict[str, float]  # precision -> FLOP/s
    read_bandwidth: float | None  # bytes/s
    entries: tuple[dict, ...]  # the file's benchmarks on this device


@dataclass(frozen=True)
class Cell:
    """One row's figures on one device."""

    tokens_per_s: float
    mfu: float | None
    bw_bound_tokens_per_s: float | None

    @property
    def of_bw_bound(self) -> float | None:
        return self.tokens_per_s / self.bw_bound_tokens_per_s if self.bw_bound_tokens_per_s else None


# ---------------------------------------------------------------------------------------------
# Reading


def load_benchmark_json(path: str | Path) -> dict:
    """A pytest-benchmark JSON file (as written by --benchmark-json), checked for its two sections."""
    path = Path(path)
    try:
        data = read_json(path)
    except FileFormatError as exc:
        raise BenchReportError(str(exc)) from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list) or "machine_info" not in data:
        raise BenchReportError(f"{path}: not a pytest-benchmark JSON file (needs 'benchmarks' and 'machine_info')")
    return data


def _entries(data: dict, path: Path) -> list[dict]:
    """The file's benchmarks written by the bench/ suites (those with a workload and a median time)."""
    out = []
    for bench in data["benchmarks"]:
        info = bench.get("extra_info") or {}
        median = (bench.get("stats") or {}).get("median")
        if "workload" not in info or "device" not in info:
            continue
        if not isinstance(median, (int, float)) or median <= 0:
            raise BenchReportError(f"{path}: benchmark {bench.get('name')!r} has no positive median time")
        missing = [k for k in REQUIRED.get(info["workload"], ()) if k not in info]
        if missing:
            raise BenchReportError(f"{path}: benchmark {bench.get('name')!r} lacks extra_info {', '.join(missing)}")
        out.append({**info, "median": float(median), "name": bench.get("name")})
    return out


def machine_label(machine_info: dict, device: str) -> str:
    """'<CPU model>, N threads' for a CPU column, the GPU's name for a CUDA column."""
    info = machine_info.get("decoder") or {}
    if device == "cuda":
        return info.get("gpu") or "unknown GPU"
    cpu = info.get("cpu") or (machine_info.get("cpu") or {}).get("brand_raw") or "unknown CPU"
    threads = info.get("torch_threads")
    return f"{cpu}, {threads} threads" if threads else cpu


def _source(path: Path, data: dict, device: str, entries: list[dict]) -> Source:
    peaks = {e["precision"]: e["flops"] / e["median"] for e in entries if e["workload"] == "matmul"}
    bandwidth = [e["bytes"] / e["median"] for e in entries if e["workload"] == "bandwidth"]
    return Source(path=path, device=device, machine=machine_label(data["machine_info"], device),
                  matmul_peak=peaks, read_bandwidth=max(bandwidth) if bandwidth else None, entries=tuple(entries))


def device_sources(paths: list[str | Path]) -> dict[str, list[Source]]:
    """device -> the Sources of its column: the first file (in the order given) that measured the
    device, then any later file measured on the same machine."""
    if not paths:
        raise BenchReportError("no benchmark files given")
    sources: dict[str, list[Source]] = {}
    found_any = False
    for path in map(Path, paths):
        data = load_benchmark_json(path)
        entries = _entries(data, path)
        found_any = found_any or bool(entries)
        for device in DEVICES:
            on_device = [e for e in entries if e["device"] == device]
            if not on_device:
                continue
            source = _source(path, data, device, on_device)
            column = sources.setdefault(device, [])
            if not column or column[0].machine == source.machine:
                column.append(source)
    if not found_any:
        raise BenchReportError(f"{', '.join(map(str, paths))}: no benchmarks of the bench/ suites in "
                               "(run: pytest bench/ --benchmark-only --benchmark-json=FILE)")
    return sources


# ---------------------------------------------------------------------------------------------
# Computing


def row_key(entry: dict) -> RowKey:
    return tuple(entry.get(f) for f in KEY_FIELDS)


def cell_of(entry: dict, matmul_peak: dict[str, float], read_bandwidth: float | None) -> Cell:
    """Tokens/s from the median time; MFU where FLOPs and the same precision's peak are known;
    the bandwidth bound where the weight bytes per step and the read bandwidth are known."""
    tokens_per_s = entry["tokens"] / entry["median"]
    peak = matmul_peak.get(entry["precision"])
    mfu = entry["flops"] / entry["median"] / peak if "flops" in entry and peak else None
    bound = None
    if entry.get("weight_bytes") and read_bandwidth:
        bound = entry["batch"] * read_bandwidth / entry["weight_bytes"]
    return Cell(tokens_per_s=tokens_per_s, mfu=mfu, bw_bound_tokens_per_s=bound)


# Display order of the values the suites write; anything else sorts after them, alphabetically.
ORDER = {
    "model": ("reference", "small", "medium"),
    "engine": ("reference notebook", "nanoGPT", "decoder, logits loss", "decoder", "torch uncached", "torch kv-cache",
               "transformers", "onnxruntime", "onnxruntime-genai"),
    "precision": ("fp32", "bf16", "int8"),
}


def _rank(value: Any, order: tuple) -> tuple:
    return (order.index(value) if value in order else len(order), str(value))


def _sort_key(key: RowKey) -> tuple:
    workload, model, engine, precision, batch = key
    return (WORKLOADS.index(workload), _rank(model, ORDER["model"]), batch or 0, _rank(engine, ORDER["engine"]),
            _rank(precision, ORDER["precision"]))


def column_cells(column: list[Source]) -> dict[RowKey, Cell]:
    """A device column's rows; a row measured by several of its files keeps the first file's figure."""
    machine_peak: dict[str, float] = {}
    for source in reversed(column):  # the earliest file's peak wins
        machine_peak.update(source.matmul_peak)
    machine_bandwidth = next((s.read_bandwidth for s in column if s.read_bandwidth), None)
    cells: dict[RowKey, Cell] = {}
    for source in column:
        peak = {**machine_peak, **source.matmul_peak}
        bandwidth = source.read_bandwidth or machine_bandwidth
        for entry in source.entries:
            if entry["workload"] in WORKLOADS:
                cells.setdefault(row_key(entry), cell_of(entry, peak, bandwidth))
    return cells


def build_table(sources: dict[str, list[Source]]) -> list[dict[str, Any]]:
    """The merged rows (dicts with COLUMNS); None where a device did not measure a row."""
    cells = {device: column_cells(column) for device, column in sources.items()}
    keys = sorted({k for per_device in cells.values() for k in per_device}, key=_sort_key)
    rows = []
    for key in keys:
        row: dict[str, Any] = dict(zip(KEY_FIELDS, key, strict=True))
        for device in DEVICES:
            cell = cells.get(device, {}).get(key)
            row[f"{device}_tokens_per_s"] = cell.tokens_per_s if cell else None
            row[f"{device}_mfu"] = cell.mfu if cell else None
            row[f"{device}_bw_bound_tokens_per_s"] = cell.bw_bound_tokens_per_s if cell else None
            row[f"{device}_of_bw_bound"] = cell.of_bw_bound if cell else None
            row[f"{device}_machine"] = sources[device][0].machine if cell else None
        cpu, cuda = row["cpu_tokens_per_s"], row["cuda_tokens_per_s"]
        row["cuda_over_cpu"] = cuda / cpu if cpu and cuda else None
        rows.append({c: row[c] for c in COLUMNS})
    return rows


@dataclass(frozen=True)
class Check:
    """A figure compared with a target (or shown without one). `compares` names what it measures;
    kind 'ratio': row / other on the same device; 'mfu': the row's MFU; 'bw_bound': the row's share
    of its memory-bandwidth bound; 'cuda_over_cpu': the row's CUDA/CPU ratio."""

    compares: str
    label: str
    kind: str
    row: dict
    other: dict | None = None
    target: float | None = None


def _generation_checks(batch: int) -> list[Check]:
    def gen(engine: str, precision: str = "fp32") -> dict:
        return {"workload": "generate", "engine": engine, "precision": precision, "batch": batch}

    targeted = batch == 1  # the targets are for one user's stream (batch 1)
    runtime, cache = "ONNX runtime over the torch baselines", "KV cache over recomputing the context"
    genai = [Check("decoder.runtime over onnxruntime-genai (same model file and threads)",
                   f"generate b{batch}: onnxruntime {p} / onnxruntime-genai {p}", "ratio", gen("onnxruntime", p),
                   gen("onnxruntime-genai", p), 1.0) for p in ("fp32", "int8")]
    bound = [Check("share of the memory-bandwidth bound", f"generate b{batch}: onnxruntime fp32, share of the bound",
                   "bw_bound", gen("onnxruntime"), None, 0.9)] if targeted else []
    return [
        *genai,
        *bound,
        Check(runtime, f"generate b{batch}: onnxruntime fp32 / transformers", "ratio", gen("onnxruntime"),
              gen("transformers"), 2.0 if targeted else None),
        Check(runtime, f"generate b{batch}: onnxruntime int8 / transformers", "ratio", gen("onnxruntime", "int8"),
              gen("transformers"), 5.0 if targeted else None),
        Check(runtime, f"generate b{batch}: onnxruntime fp32 (cache) / torch uncached", "ratio", gen("onnxruntime"),
              gen("torch uncached"), 4.0 if targeted else None),
        Check(cache, f"generate b{batch}: torch kv-cache / torch uncached", "ratio", gen("torch kv-cache"),
              gen("torch uncached")),
    ]


def _checks() -> list[Check]:
    ref = {"workload": "train", "model": "reference"}
    medium = {"workload": "train", "model": "medium", "engine": "decoder"}
    small = {"workload": "train", "model": "small", "engine": "decoder"}
    return [
        *[Check("training speed over the reference notebook",
                f"train reference config: decoder {p} (compact vocab) / reference notebook fp32 (full vocab)", "ratio",
                {**ref, "engine": "decoder", "precision": p}, {**ref, "engine": "reference notebook",
                                                               "precision": "fp32"}, 8.0)
          for p in ("fp32", "bf16")],
        *[Check("training speed over nanoGPT", f"train small (default shape): decoder {p} / nanoGPT {p}", "ratio",
                {**small, "precision": p}, {**small, "engine": "nanoGPT", "precision": p}) for p in ("fp32", "bf16")],
        *[Check("fused output-layer loss over full logits", f"train small: decoder {p}, fused loss / logits loss",
                "ratio", {**small, "precision": p}, {**small, "engine": "decoder, logits loss", "precision": p})
          for p in ("fp32", "bf16")],
        *[Check("share of the measured matmul peak", f"train medium: decoder {p} MFU", "mfu",
                {**medium, "precision": p}, None, 0.5) for p in ("fp32", "bf16")],
        *[Check("GPU over CPU", f"train medium: decoder {p} CUDA/CPU", "cuda_over_cpu", {**medium, "precision": p},
                None, 20.0) for p in ("fp32", "bf16")],
        *_generation_checks(1),
        *_generation_checks(8),
    ]


def find_row(rows: list[dict], fields: dict) -> dict | None:
    """The single row matching every given field, or None."""
    found = [r for r in rows if all(r[k] == v for k, v in fields.items())]
    return found[0] if len(found) == 1 else None


def _check_values(check: Check, rows: list[dict]) -> list[tuple[str, float | None]]:
    row = find_row(rows, check.row)
    if check.kind == "cuda_over_cpu":
        return [("cuda vs cpu", row["cuda_over_cpu"] if row else None)]
    other = find_row(rows, check.other) if check.other else None
    values = []
    for device in DEVICES:
        if check.kind in ("mfu", "bw_bound"):
            value = row[f"{device}_{'mfu' if check.kind == 'mfu' else 'of_bw_bound'}"] if row else None
        else:
            num = row[f"{device}_tokens_per_s"] if row else None
            den = other[f"{device}_tokens_per_s"] if other else None
            value = num / den if num and den else None
        values.append((device, value))
    return values


def comparisons(rows: list[dict]) -> list[dict[str, Any]]:
    """The checks computed from the table: one entry per (check, device) measured."""
    out = []
    for check in _checks():
        for device, value in _check_values(check, rows):
            if value is None:
                continue
            out.append({"compares": check.compares, "comparison": check.label, "device": device, "kind": check.kind,
                        "value": value, "target": check.target,
                        "met": None if check.target is None else value >= check.target})
    return out
