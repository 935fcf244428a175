"""The serving benchmark's statistics (bench/serving_stats.py) on fake timestamp streams with known
answers, its goodput targets, and its seeded Poisson arrivals."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # bench/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(REPO))

from bench.serving_load import arrival_offsets
from bench.serving_stats import Trace, meets, parse_goodput, summarize


def trace(sent: float, first: float, gap: float, tokens: int, prompt: int = 3) -> Trace:
    """A request sent at `sent`, its first token at `first`, then one every `gap`; ends at the last."""
    chunks = [first + i * gap for i in range(tokens)]
    return Trace(sent=sent, chunks=chunks, end=chunks[-1], output_tokens=tokens, prompt_tokens=prompt)


def test_ttft_tpot_itl_e2el_of_known_streams():
    a = trace(0.0, 0.1, 0.01, 11)  # TTFT 100 ms, 10 gaps of 10 ms, ends at 0.2
    b = trace(0.5, 0.8, 0.03, 5)  # TTFT 300 ms, 4 gaps of 30 ms, ends at 0.92
    s = summarize([a, b], targets=parse_goodput(["ttft:200", "tpot:20"]))
    assert s["completed"] == 2 and s["total_output_tokens"] == 16
    assert s["duration_s"] == pytest.approx(0.92)
    assert s["request_throughput"] == pytest.approx(2 / 0.92)
    assert s["output_throughput"] == pytest.approx(16 / 0.92)
    assert s["total_token_throughput"] == pytest.approx(22 / 0.92)
    assert s["mean_ttft_ms"] == pytest.approx(200) and s["median_ttft_ms"] == pytest.approx(200)
    assert s["p99_ttft_ms"] == pytest.approx(100 + 0.99 * 200)
    assert s["mean_tpot_ms"] == pytest.approx(20)  # (10 + 30) / 2
    itl = [10.0] * 10 + [30.0] * 4
    assert s["mean_itl_ms"] == pytest.approx(np.mean(itl)) and s["median_itl_ms"] == pytest.approx(10)
    assert s["p99_itl_ms"] == pytest.approx(30)
    assert s["mean_e2el_ms"] == pytest.approx((200 + 420) / 2)
    assert s["goodput"] == pytest.approx(1 / 0.92)  # only a meets both targets


def test_one_token_request_has_no_tpot_and_meets_a_tpot_target():
    one = trace(0.0, 0.05, 0.0, 1)
    assert one.tpot is None and one.itl == []
    assert meets(one, {"tpot": 0.001, "ttft": 0.1}) and not meets(one, {"ttft": 0.01})
    s = summarize([one])
    assert math.isnan(s["mean_tpot_ms"]) and math.isnan(s["median_itl_ms"]) and "goodput" not in s


@pytest.mark.parametrize("bad", ["ttft", "latency:100", "tpot:0", "tpot:abc", "e2el:-5"])
def test_bad_goodput_target_is_refused_naming_it(bad):
    with pytest.raises(ValueError, match="--goodput"):
        parse_goodput([bad])


def test_summarize_refuses_an_empty_run():
    with pytest.raises(ValueError, match="no request completed"):
        summarize([])


def test_poisson_arrivals_are_seeded_and_have_the_rate():
    a, b = arrival_offsets(4.0, 4000, seed=1), arrival_offsets(4.0, 4000, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, arrival_offsets(4.0, 4000, seed=2))
    assert a[0] == 0 and np.all(np.diff(a) >= 0)
    assert np.mean(np.diff(a)) == pytest.approx(0.25, rel=0.05)
    assert np.all(arrival_offsets(math.inf, 5, seed=0) == 0)


def test_targets_pair_each_repeat_with_the_bound_measured_beside_it():
    from bench.serving import paired, targets

    # the machine ran at half speed in the second repeat, for the server and the bound alike
    server, bound = [700.0, 350.0, 690.0], [1000.0, 500.0, 1000.0]
    assert paired(server, bound) == (0.7, 0.69, 0.7)
    level = {"itl50": 2.0}
    results = {(1, "batched"): {**level, "tok_s": 290.0, "runs": [300.0, 150.0, 290.0]},
               (1, "offline"): {"runs": [400.0, 200.0, 400.0]},
               (16, "batched"): {**level, "tok_s": 690.0, "itl50": 7.0, "runs": server}, (16, "offline"): {"runs": bound}}
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in targets(results)[2:]}
    assert rows["aggregate tok/s at 16 clients / offline bound at batch 16"] == ["0.70", "0.69 to 0.70", "0.70",
                                                                                ">= 0.70", "yes |"]
    assert rows["tok/s at 1 client / offline bound at batch 1"][:2] == ["0.75", "0.72 to 0.75"]
    assert rows["p50 ITL at 16 clients / at 1 client (pooled)"][-1] == "no |"
    assert rows["aggregate tok/s at 16 clients / at 1 client (medians)"][:3] == ["2.38", "2.38 to 2.38", ""]
    assert rows["tok/s at 1 client / offline bound at batch 1"][2] == "0.75"


@pytest.mark.parametrize("trees,message", [
    (["--tree", "a=."], "at least two"),
    (["--tree", "a=.", "--tree", "a=."], "different names"),
    (["--tree", "a=.", "--tree", "b=/nonexistent"], "--tree 'b=/nonexistent': give NAME=DIR, DIR holding a decoder"),
    (["--tree", "a=.", "--tree", "."], "give NAME=DIR"),
])
def test_serving_ab_refuses_bad_trees_naming_them(trees, message, capsys, monkeypatch):
    from bench.serving_ab import parse_args

    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_:
        parse_args(["bundle", *trees])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_serving_ab_reads_each_threads_cpu_time():
    import os

    from bench.serving_ab import thread_cpu

    before = thread_cpu(os.getpid())
    sum(i * i for i in range(2_000_000))
    after = thread_cpu(os.getpid())
    assert os.getpid() in after and after[os.getpid()] > before[os.getpid()]
