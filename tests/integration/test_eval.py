"""`decoder eval` on the tiny trained run and its ONNX bundle: static reproduces the run's val_bpb,
the bundle agrees with the checkpoint, a text file can be scored, bad input is one line, exit 2."""

import json
import math
import subprocess
import sys

import pytest

from decoder.checkpoint import load_model
from decoder.cli import main


def eval_json(capsys, *args) -> dict:
    assert main(["eval", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_static_reproduces_the_training_loops_val_bpb(onnx_run, capsys):
    _, _, _, meta = load_model(onnx_run)
    result = eval_json(capsys, onnx_run)
    assert result["protocol"] == "static" and result["text"] == "validation split"
    assert result["bits_per_byte"] == meta["val"]["val_bpb"]  # the best checkpoint's evaluation, exactly
    assert result["tokens"] == meta["val"]["val_tokens"]


@pytest.mark.parametrize("protocol, options", [("static", []), ("sliding", ["--stride", "5"])])
def test_bundle_agrees_with_the_checkpoint(onnx_run, onnx_bundle, capsys, protocol, options):
    torch_result = eval_json(capsys, onnx_run, "--protocol", protocol, *options)
    onnx_result = eval_json(capsys, onnx_bundle, "--protocol", protocol, *options, "--threads", "1")
    assert onnx_result["engine"] == "onnxruntime" and onnx_result["tokens"] == torch_result["tokens"]
    assert onnx_result["bits_per_byte"] == pytest.approx(torch_result["bits_per_byte"], abs=1e-4)


def test_a_text_file_with_each_protocol_and_the_human_readable_output(onnx_run, tmp_path, excerpt_text, capsys):
    text = tmp_path / "page.txt"
    text.write_text(excerpt_text[:3000] * 2, encoding="utf-8")  # its second half repeats the first
    checkpoint = onnx_run / "checkpoints" / "best.pt"
    static = eval_json(capsys, checkpoint, "--text", text)
    dynamic = eval_json(capsys, checkpoint, "--text", text, "--protocol", "dynamic", "--segment", "8", "--rule", "sgd",
                        "--lr", "0.05")
    rms = eval_json(capsys, checkpoint, "--text", text, "--protocol", "dynamic", "--segment", "8", "--lr", "1e-3")
    assert rms["rule"] == "rms" and rms["tokens"] == static["tokens"] and rms["bits_per_byte"] < static["bits_per_byte"]
    tokenizer = load_model(onnx_run)[1]
    first = tokenizer.encode(text.read_text(encoding="utf-8"))[0]  # context only: its bytes are not scored
    assert dynamic["tokens"] == static["tokens"]
    assert dynamic["bytes"] == static["bytes"] == len(text.read_bytes()) - len(tokenizer.token_bytes(first))
    assert dynamic["bits_per_byte"] < static["bits_per_byte"]
    assert main(["eval", str(onnx_run), "--text", str(text), "--protocol", "sliding"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("sliding protocol (stride 8; context 16) on ")
    assert [line.split("  ")[0] for line in out[1:]] == [
        "bits per byte", "nats per token", "token perplexity", "byte perplexity", "word perplexity", "tokens",
        "bytes", "words", "seconds"]


def test_mix_on_the_validation_split_and_a_repeated_text(onnx_run, tmp_path, excerpt_text, capsys):
    split = eval_json(capsys, onnx_run, "--protocol", "mix", "--order", "3")
    assert split["protocol"] == "mix" and split["order"] == 3 and split["dynamic_lr"] == 1e-4
    # this tiny model is far worse than the n-gram: the mixture costs a little more than the n-gram alone
    assert split["bits_per_byte"] < min(split["model_bits_per_byte"], split["ngram_bits_per_byte"] + 0.02)
    text = tmp_path / "page.txt"
    text.write_text(excerpt_text[:3000] * 2, encoding="utf-8")
    static = eval_json(capsys, onnx_run, "--text", text)
    mixed = eval_json(capsys, onnx_run, "--text", text, "--protocol", "mix", "--dynamic-lr", "0", "--segment", "8")
    assert mixed["tokens"] == static["tokens"] and mixed["bits_per_byte"] < 0.7 * static["bits_per_byte"]
    assert main(["eval", str(onnx_run), "--text", str(text), "--protocol", "mix"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("mix protocol (segment 8, rule rms, dynamic lr 0.0001, order 4; context 16) on ")
    assert [line.split("  ")[0] for line in out[-5:]] == [
        "model alone bpb", "n-gram alone bpb", "model weight", "model seconds", "n-gram seconds"]


def test_knn_mix_prints_its_figures_and_settings(onnx_run, capsys):
    result = eval_json(capsys, onnx_run, "--protocol", "knn-mix", "--order", "3")
    assert result["protocol"] == "knn-mix" and result["neighbours"] == 64 and result["knn_temperature"] == 30.0
    assert result["order"] == 3 and result["segment"] == 8 and result["dynamic_lr"] == 1e-4
    for name in ("model", "ngram", "knn", "mix"):
        assert 0 < result[f"{name}_bits_per_byte"] < 20
    assert result["bits_per_byte"] < min(result["model_bits_per_byte"], result["knn_bits_per_byte"])
    assert all(result[f"{p}_seconds"] > 0 for p in ("model", "ngram", "datastore", "search", "mixing"))
    tuned = eval_json(capsys, onnx_run, "--protocol", "knn-mix", "--neighbours", "8", "--knn-temperature", "5")
    assert (tuned["neighbours"], tuned["knn_temperature"]) == (8, 5.0)
    assert tuned["knn_bits_per_byte"] != result["knn_bits_per_byte"] and tuned["tokens"] == result["tokens"]
    assert main(["eval", str(onnx_run), "--protocol", "knn-mix", "--neighbours", "8"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("knn-mix protocol (segment 8, rule rms, dynamic lr 0.0001, order 4, neighbours 8, knn "
                             "temperature 30.0; context 16) on ")
    assert [line.split("  ")[0] for line in out[-12:]] == [
        "model alone bpb", "n-gram alone bpb", "kNN alone bpb", "mix bpb", "model weight", "n-gram weight",
        "kNN weight", "model seconds", "n-gram seconds", "datastore seconds", "search seconds", "mixing seconds"]


@pytest.mark.parametrize("args, message", [
    (["{missing}"], "no such run folder, checkpoint or bundle"),
    (["{run}", "--text", "{missing}"], "--text"),
    (["{run}", "--protocol", "sliding", "--stride", "17"], "--stride=17: must be in [1, 16]"),
    (["{run}", "--stride", "4"], "--stride applies to --protocol sliding"),
    (["{bundle}", "--protocol", "dynamic"], "--protocol dynamic learns as it scores and needs PyTorch"),
    (["{bundle}", "--protocol", "mix", "--dynamic-lr", "0"], "--protocol mix learns as it scores and needs PyTorch"),
    (["{run}", "--protocol", "mix", "--order", "9"], "--order=9: must be in [1, 8]"),
    (["{run}", "--protocol", "mix", "--dynamic-lr", "-1"], "--dynamic-lr=-1.0: must be a finite number >= 0"),
    (["{run}", "--protocol", "dynamic", "--dynamic-lr", "0.1"], "--dynamic-lr applies to --protocol mix"),
    (["{run}", "--protocol", "mix", "--lr", "0.1"], "--lr applies to --protocol dynamic, not mix"),
    (["{run}", "--text", "{empty}"], "0 token(s); scoring needs at least 2"),
    (["{run}", "--protocol", "static", "--neighbours", "8"], "--neighbours applies to --protocol knn-mix, not static"),
    (["{run}", "--protocol", "mix", "--knn-temperature", "5"], "--knn-temperature applies to --protocol knn-mix"),
    (["{run}", "--protocol", "knn-mix", "--neighbours", "0"], "--neighbours=0: must be >= 1"),
    (["{bundle}", "--protocol", "knn-mix"], "--protocol knn-mix learns as it scores and needs PyTorch"),
])
def test_bad_input_is_one_line_and_exit_2(onnx_run, onnx_bundle, tmp_path, capsys, args, message):
    (tmp_path / "empty.txt").write_text("")
    names = {"run": onnx_run, "bundle": onnx_bundle, "missing": tmp_path / "nope", "empty": tmp_path / "empty.txt"}
    assert main(["eval", *(a.format(**names) for a in args)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("decoder eval: error: ") and message in err


def test_the_command_exits_2_on_a_missing_source(tmp_path):
    done = subprocess.run([sys.executable, "-m", "decoder", "eval", str(tmp_path / "nope")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1


def test_a_run_scores_its_final_protocols_and_the_report_shows_them(small_corpus, tmp_path):
    """training.final_protocols: the best checkpoint under each protocol at the end of the run;
    static is the training metric itself, and the report's table gains a column per protocol."""
    from tinyconf import tiny_config

    from decoder.report.table import summary_frame, summary_markdown
    from decoder.runs import read_run
    from decoder.train import train

    config = tiny_config(small_corpus, training={"final_protocols": ["static", "sliding", "mix", "knn-mix"]})
    summary = train(config, tmp_path / "run", quiet=True)
    protocols = summary["protocols"]
    assert list(protocols) == ["static", "sliding", "mix", "knn-mix"]
    assert protocols["static"]["bits_per_byte"] == summary["best_val_bpb"]
    assert protocols["sliding"]["stride"] == config.model.context_length // 2
    for p in protocols.values():
        assert math.isfinite(p["bits_per_byte"]) and p["seconds"] >= 0
    assert protocols["sliding"]["bits_per_byte"] != protocols["static"]["bits_per_byte"]
    frame = summary_frame([read_run(tmp_path / "run", "tiny")])
    assert frame.loc[0, "mix_val_bpb"] == protocols["mix"]["bits_per_byte"]
    assert frame.loc[0, "knn_mix_val_bpb"] == protocols["knn-mix"]["bits_per_byte"]
    text = summary_markdown("tiny", frame, [], [], command="decoder report tiny")
    assert "| sliding bpb | mix bpb | knn-mix bpb |" in text and "dynamic bpb" not in text


def test_a_run_without_final_protocols_has_none(small_corpus, tmp_path):
    from tinyconf import tiny_config

    from decoder.report.table import summary_frame, summary_markdown
    from decoder.runs import read_run
    from decoder.train import train

    summary = train(tiny_config(small_corpus, training={"max_steps": 5}), tmp_path / "run", quiet=True)
    assert "protocols" not in summary
    frame = summary_frame([read_run(tmp_path / "run", "tiny")])
    assert "sliding bpb" not in summary_markdown("tiny", frame, [], [], command="c")
