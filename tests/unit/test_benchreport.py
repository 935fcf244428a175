"""`decoder bench`: merging a CPU machine's and a GPU machine's pytest-benchmark JSON into one table.

The JSON files are synthetic but shaped as the bench/ suites write them (extra_info + stats.median
+ machine_info["decoder"]); every expected figure is computed here from the same inputs.
"""

from __future__ import annotations

import csv
import json
import re

import pytest

from decoder.report.throughput import write_report
from decoder.report.throughput_table import (COLUMNS, BenchReportError, build_table, comparisons, device_sources,
                                             find_row)
from decoder.cli import main as cli_main

CPU_PEAK = {"fp32": (2e11, 2.0), "bf16": (4e11, 1.0)}  # precision -> (flops per call, median s)
CPU_BANDWIDTH = (2e10, 0.5)  # (bytes per call, median s)
CUDA_PEAK = {"fp32": (1e13, 0.1)}  # no bf16 peak measured: bf16 rows get no MFU
MEDIUM_FLOPS = 4096 * 25_000_000  # tokens per step x FLOPs per token
GEN_WEIGHT_BYTES = 62_000_000


def bench(name: str, median: float, **info) -> dict:
    return {"name": name, "group": None, "params": {}, "extra_info": info,
            "stats": {"median": median, "mean": median, "rounds": 3}}


def train(device: str, model: str, engine: str, precision: str, batch: int, tokens: int, median: float,
          flops: float | None = None) -> dict:
    info = dict(workload="train", model=model, engine=engine, precision=precision, batch=batch, device=device,
                tokens=tokens, threads=2)
    if flops is not None:
        info["flops"] = flops
    return bench(f"test_train[{device}-{model}-{engine}-{precision}]", median, **info)


def generate(device: str, engine: str, precision: str, batch: int, median: float) -> dict:
    return bench(f"test_generate[{device}-{engine}-{precision}-{batch}]", median, workload="generate",
                 model="medium", engine=engine, precision=precision, batch=batch, device=device,
                 tokens=batch * 128, weight_bytes=GEN_WEIGHT_BYTES)


def peaks(device: str, matmul: dict, bandwidth: tuple | None) -> list[dict]:
    out = [bench(f"test_matmul_peak[{device}-{p}]", median, workload="matmul", precision=p, device=device,
                 flops=flops) for p, (flops, median) in matmul.items()]
    if bandwidth:
        out.append(bench(f"test_read_bandwidth[{device}]", bandwidth[1], workload="bandwidth", device=device,
                         bytes=bandwidth[0]))
    return out


def write(path, machine: dict, benchmarks: list[dict]) -> str:
    path.write_text(json.dumps({"machine_info": {"node": "x", "decoder": machine}, "commit_info": {},
                                "benchmarks": benchmarks, "datetime": "now", "version": "5.3.1"}))
    return str(path)


@pytest.fixture
def cpu_json(tmp_path) -> str:
    return write(tmp_path / "cpu.json", {"cpu": "Test CPU 9000", "torch_threads": 2, "gpu": None}, [
        *peaks("cpu", CPU_PEAK, CPU_BANDWIDTH),
        train("cpu", "medium", "decoder", "fp32", 16, 4096, 2.0, MEDIUM_FLOPS),
        train("cpu", "medium", "decoder", "bf16", 16, 4096, 0.8, MEDIUM_FLOPS),
        train("cpu", "reference", "decoder", "bf16", 50, 2000, 0.5),
        train("cpu", "reference", "reference notebook", "fp32", 50, 2000, 5.0),
        train("cpu", "small", "decoder", "fp32", 32, 2048, 0.5),
        train("cpu", "small", "decoder, logits loss", "fp32", 32, 2048, 0.6),
        train("cpu", "small", "nanoGPT", "fp32", 32, 2048, 0.65),
        generate("cpu", "onnxruntime", "fp32", 1, 0.25),
        generate("cpu", "onnxruntime", "int8", 1, 0.3),
        generate("cpu", "transformers", "fp32", 1, 1.0),
        bench("test_unrelated", 1.0, note="not from bench/"),  # ignored: no workload
    ])


@pytest.fixture
def cuda_json(tmp_path) -> str:
    return write(tmp_path / "cuda.json", {"cpu": "Host CPU", "torch_threads": 16, "gpu": "Fake GPU 100"}, [
        *peaks("cuda", CUDA_PEAK, None),
        train("cpu", "medium", "decoder", "fp32", 16, 4096, 1.0, MEDIUM_FLOPS),  # the GPU host's CPU
        train("cuda", "medium", "decoder", "fp32", 16, 4096, 0.04, MEDIUM_FLOPS),
        train("cuda", "medium", "decoder", "bf16", 16, 4096, 0.02, MEDIUM_FLOPS),
    ])


def row(rows, **fields) -> dict:
    found = find_row(rows, fields)
    assert found is not None, f"no single row with {fields}"
    return found


def test_merged_columns_ratio_and_machines(cpu_json, cuda_json):
    rows = build_table(device_sources([cpu_json, cuda_json]))
    r = row(rows, workload="train", model="medium", engine="decoder", precision="fp32")
    assert r["cpu_tokens_per_s"] == pytest.approx(4096 / 2.0)  # from cpu.json, not the GPU host's CPU
    assert r["cuda_tokens_per_s"] == pytest.approx(4096 / 0.04)
    assert r["cuda_over_cpu"] == pytest.approx((4096 / 0.04) / (4096 / 2.0))
    assert r["cpu_machine"] == "Test CPU 9000, 2 threads" and r["cuda_machine"] == "Fake GPU 100"
    only_cpu = row(rows, workload="train", model="reference", engine="reference notebook")
    assert only_cpu["cuda_tokens_per_s"] is None and only_cpu["cuda_over_cpu"] is None
    assert only_cpu["cuda_machine"] is None
    assert all(r["workload"] in ("train", "generate") for r in rows)  # peaks and unrelated entries are not rows


def test_first_file_gives_each_device_column(cpu_json, cuda_json):
    rows = build_table(device_sources([cuda_json, cpu_json]))
    r = row(rows, workload="train", model="medium", engine="decoder", precision="fp32")
    assert r["cpu_tokens_per_s"] == pytest.approx(4096 / 1.0)
    assert r["cpu_machine"] == "Host CPU, 16 threads"
    # The GPU host measured no peaks on its CPU, so that column has no MFU.
    assert r["cpu_mfu"] is None


def test_files_of_the_same_machine_fill_one_column(cpu_json, tmp_path):
    """A suite run in parts on one machine: rows from a later file join the column and use the
    peaks of the earlier file; a row measured twice keeps the first figure."""
    part = write(tmp_path / "part2.json", {"cpu": "Test CPU 9000", "torch_threads": 2, "gpu": None}, [
        train("cpu", "reference", "decoder", "fp32", 50, 4096, 4.0, MEDIUM_FLOPS),
        train("cpu", "medium", "decoder", "fp32", 16, 4096, 100.0, MEDIUM_FLOPS),  # already in cpu.json
    ])
    other_machine = write(tmp_path / "other.json", {"cpu": "Other CPU", "torch_threads": 8, "gpu": None}, [
        train("cpu", "tiny", "decoder", "fp32", 8, 1024, 1.0),
    ])
    sources = device_sources([cpu_json, part, other_machine])
    assert [s.path.name for s in sources["cpu"]] == ["cpu.json", "part2.json"]
    rows = build_table(sources)
    added = row(rows, workload="train", model="reference", engine="decoder", precision="fp32")
    assert added["cpu_tokens_per_s"] == pytest.approx(4096 / 4.0)
    assert added["cpu_mfu"] == pytest.approx(MEDIUM_FLOPS / 4.0 / (CPU_PEAK["fp32"][0] / CPU_PEAK["fp32"][1]))
    medium = row(rows, workload="train", model="medium", precision="fp32")
    assert medium["cpu_tokens_per_s"] == pytest.approx(4096 / 2.0)
    assert find_row(rows, {"model": "tiny"}) is None


def test_mfu_uses_the_same_device_and_precision_peak(cpu_json, cuda_json):
    rows = build_table(device_sources([cpu_json, cuda_json]))
    fp32 = row(rows, workload="train", model="medium", engine="decoder", precision="fp32")
    bf16 = row(rows, workload="train", model="medium", engine="decoder", precision="bf16")
    cpu_peak = {p: flops / median for p, (flops, median) in CPU_PEAK.items()}
    assert fp32["cpu_mfu"] == pytest.approx(MEDIUM_FLOPS / 2.0 / cpu_peak["fp32"])
    assert bf16["cpu_mfu"] == pytest.approx(MEDIUM_FLOPS / 0.8 / cpu_peak["bf16"])
    assert fp32["cuda_mfu"] == pytest.approx(MEDIUM_FLOPS / 0.04 / (CUDA_PEAK["fp32"][0] / CUDA_PEAK["fp32"][1]))
    assert bf16["cuda_mfu"] is None  # no bf16 matmul peak in cuda.json
    ref = row(rows, workload="train", model="reference", engine="decoder")
    assert ref["cpu_mfu"] is None  # no FLOPs recorded for that row


def test_bandwidth_bound_of_generation(cpu_json):
    rows = build_table(device_sources([cpu_json]))
    r = row(rows, workload="generate", engine="onnxruntime", precision="fp32", batch=1)
    bandwidth = CPU_BANDWIDTH[0] / CPU_BANDWIDTH[1]
    bound = 1 * bandwidth / GEN_WEIGHT_BYTES
    assert r["cpu_bw_bound_tokens_per_s"] == pytest.approx(bound)
    assert r["cpu_of_bw_bound"] == pytest.approx((128 / 0.25) / bound)
    assert r["cuda_bw_bound_tokens_per_s"] is None


def test_comparisons_against_targets(cpu_json, cuda_json):
    comps = {(c["comparison"], c["device"]): c for c in comparisons(build_table(device_sources([cpu_json, cuda_json])))}
    ref = comps[("train reference config: decoder bf16 (compact vocab) / reference notebook fp32 (full vocab)", "cpu")]
    assert ref["value"] == pytest.approx((2000 / 0.5) / (2000 / 5.0)) and ref["target"] == 8.0 and ref["met"]
    fp32_ort = comps[("generate b1: onnxruntime fp32 / transformers", "cpu")]
    assert fp32_ort["value"] == pytest.approx((128 / 0.25) / (128 / 1.0)) and fp32_ort["met"]
    int8_ort = comps[("generate b1: onnxruntime int8 / transformers", "cpu")]
    assert int8_ort["value"] == pytest.approx((128 / 0.3) / (128 / 1.0)) and int8_ort["met"] is False
    cuda_cpu = comps[("train medium: decoder fp32 CUDA/CPU", "cuda vs cpu")]
    assert cuda_cpu["value"] == pytest.approx(2.0 / 0.04) and cuda_cpu["met"]
    mfu = comps[("train medium: decoder fp32 MFU", "cpu")]
    assert mfu["value"] == pytest.approx(MEDIUM_FLOPS / 2.0 / (CPU_PEAK["fp32"][0] / CPU_PEAK["fp32"][1]))
    nano = comps[("train small (default shape): decoder fp32 / nanoGPT fp32", "cpu")]
    assert nano["value"] == pytest.approx(0.65 / 0.5) and nano["target"] is None
    assert nano["compares"] == "training speed over nanoGPT"
    after = comps[("train small: decoder fp32, fused loss / logits loss", "cpu")]
    assert after["value"] == pytest.approx(0.6 / 0.5)
    # Nothing measured, nothing reported: no torch rows, no fp32 reference-config row, no bf16 nanoGPT.
    assert not [k for k in comps if "torch uncached" in k[0] or "decoder fp32 (compact" in k[0]
                or "bf16 / nanoGPT" in k[0]]


def test_command_writes_csv_markdown_and_plot(cpu_json, cuda_json, tmp_path, capsys):
    out = tmp_path / "results"
    assert cli_main(["bench", "--json", cpu_json, cuda_json, "--out", str(out)]) == 0
    with open(out / "throughput.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COLUMNS
        lines = list(reader)
    ref = [r for r in lines if r["engine"] == "reference notebook"]
    assert len(ref) == 1 and float(ref[0]["cpu_tokens_per_s"]) == pytest.approx(400.0)
    assert ref[0]["cuda_tokens_per_s"] == "" and ref[0]["cuda_over_cpu"] == ""
    md = (out / "throughput.md").read_text()
    assert "Test CPU 9000, 2 threads" in md and "Fake GPU 100" in md and cpu_json in md
    assert "| train | medium | decoder | fp32 | 16 | 2,048 | 102,400 | 50.00× |" in md
    assert "## Targets" in md and "| compares | comparison | device | value | target | met |" in md
    assert "| training speed over nanoGPT | train small (default shape): decoder fp32 / nanoGPT fp32 | cpu |" in md
    assert "issue" not in md and not re.search(r"#\d", md)
    png = (out / "throughput.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert not list(out.glob(".*.tmp"))


def test_same_file_gives_both_columns(cuda_json, tmp_path):
    paths = write_report([cuda_json], tmp_path)
    rows = list(csv.DictReader(open(paths["csv"], newline="")))
    r = [x for x in rows if x["precision"] == "fp32"][0]
    assert float(r["cuda_over_cpu"]) == pytest.approx(1.0 / 0.04)


@pytest.mark.parametrize("content, message", [
    ("{not json", "not readable JSON"),
    (json.dumps({"benchmarks": []}), "not a pytest-benchmark JSON file"),
    (json.dumps({"machine_info": {}, "benchmarks": [{"name": "x", "extra_info": {}, "stats": {"median": 1}}]}),
     "no benchmarks of the bench/ suites"),
    (json.dumps({"machine_info": {}, "benchmarks": [
        {"name": "x", "extra_info": {"workload": "train", "device": "cpu", "model": "m", "engine": "e",
                                     "precision": "fp32", "batch": 1}, "stats": {"median": 1}}]}),
     "lacks extra_info tokens"),
    (json.dumps({"machine_info": {}, "benchmarks": [
        {"name": "x", "extra_info": {"workload": "bandwidth", "device": "cpu", "bytes": 1}, "stats": {"median": 0}}]}),
     "no positive median time"),
])
def test_bad_files_give_one_line_errors(tmp_path, capsys, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    assert cli_main(["bench", "--json", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_missing_file_and_no_input(tmp_path, capsys):
    assert cli_main(["bench", "--json", str(tmp_path / "nope.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli_main(["bench", "--out", str(tmp_path)]) == 2
    assert "give --json FILE" in capsys.readouterr().err
    with pytest.raises(BenchReportError, match="no benchmark files"):
        device_sources([])
