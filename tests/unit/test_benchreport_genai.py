"""`decoder bench`: the rows of decoder.runtime beside onnxruntime-genai, their ratio checked
against 1.0 at batch 1 and 8, and the share of the memory-bandwidth bound at batch 1 against 90%."""

from __future__ import annotations

import pytest

from decoder.report.throughput import write_report
from decoder.report.throughput_table import build_table, comparisons, device_sources
from test_benchreport import CPU_BANDWIDTH, CPU_PEAK, GEN_WEIGHT_BYTES, generate, peaks, write

MEDIANS = {  # (engine, precision, batch) -> median seconds of a 128-token call
    ("onnxruntime", "fp32", 1): 0.20, ("onnxruntime-genai", "fp32", 1): 0.21,
    ("onnxruntime", "int8", 1): 0.08, ("onnxruntime-genai", "int8", 1): 0.06,
    ("onnxruntime", "fp32", 8): 0.50, ("onnxruntime-genai", "fp32", 8): 0.55,
}


@pytest.fixture
def genai_json(tmp_path) -> str:
    rows = [generate("cpu", engine, precision, batch, median) for (engine, precision, batch), median in MEDIANS.items()]
    return write(tmp_path / "cpu.json", {"cpu": "Test CPU 9000", "torch_threads": 2, "gpu": None},
                 [*peaks("cpu", CPU_PEAK, CPU_BANDWIDTH), *rows])


def test_runtime_over_genai_and_the_bound_are_checked(genai_json):
    comps = {c["comparison"]: c for c in comparisons(build_table(device_sources([genai_json])))}
    fp32 = comps["generate b1: onnxruntime fp32 / onnxruntime-genai fp32"]
    assert fp32["value"] == pytest.approx(0.21 / 0.20) and fp32["target"] == 1.0 and fp32["met"]
    int8 = comps["generate b1: onnxruntime int8 / onnxruntime-genai int8"]
    assert int8["value"] == pytest.approx(0.06 / 0.08) and int8["met"] is False
    assert comps["generate b8: onnxruntime fp32 / onnxruntime-genai fp32"]["value"] == pytest.approx(0.55 / 0.50)
    assert "generate b8: onnxruntime int8 / onnxruntime-genai int8" not in comps  # not measured: not reported
    bound = comps["generate b1: onnxruntime fp32, share of the bound"]
    tokens_per_s_bound = CPU_BANDWIDTH[0] / CPU_BANDWIDTH[1] / GEN_WEIGHT_BYTES
    assert bound["kind"] == "bw_bound" and bound["target"] == 0.9
    assert bound["value"] == pytest.approx((128 / 0.20) / tokens_per_s_bound)
    assert bound["met"] == (bound["value"] >= 0.9)
    assert not [c for c in comps if c.startswith("generate b8") and "share of the bound" in c]


def test_the_markdown_shows_both_engines_and_the_bound_as_a_share(genai_json, tmp_path):
    md = write_report([genai_json], tmp_path)["md"].read_text()
    assert "| generate | medium | onnxruntime-genai | fp32 | 1 |" in md
    share = (128 / 0.20) / (CPU_BANDWIDTH[0] / CPU_BANDWIDTH[1] / GEN_WEIGHT_BYTES)
    assert f"| generate b1: onnxruntime fp32, share of the bound | cpu | {100 * share:.1f}% | ≥ 90.0% |" in md
