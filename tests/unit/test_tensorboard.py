"""TensorBoard logging (`training.tensorboard`): the scalars and hyperparameters a run writes into
its folder's tensorboard/, read back with TensorBoard's own reader; nothing when turned off."""

import pytest
from tinyconf import tiny_config

from decoder.runs import RunDir
from decoder.train import train

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402


def _scalars(log_dir) -> dict[str, list[int]]:
    """Tag -> the steps it was logged at."""
    acc = event_accumulator.EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_a_run_logs_scalars_at_log_and_eval_steps_and_hparams_at_the_end(small_corpus, tmp_path):
    config = tiny_config(small_corpus, training={"max_steps": 20, "eval_interval": 10, "log_interval": 5})
    summary = train(config, tmp_path / "run", quiet=True)
    scalars = _scalars(RunDir(tmp_path / "run").tensorboard_dir)
    for tag in ("train/loss", "train/lr", "train/tokens_per_s"):
        assert scalars[tag] == [5, 10, 15, 20], tag  # log_interval steps only, never per step
    for tag in ("val/loss", "val/bpb", "val/ppl"):
        assert scalars[tag] == [10, 20], tag
    for tag in ("hparam/best_val_loss", "hparam/best_val_bpb", "hparam/final_val_bpb", "hparam/tokens_per_s"):
        assert scalars[tag] == [summary["step"]], tag
    acc = event_accumulator.EventAccumulator(str(RunDir(tmp_path / "run").tensorboard_dir))
    acc.Reload()
    start = plugin_data_pb2.HParamsPluginData.FromString(
        acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model.d_model"].number_value == 32
    assert start.hparams["training.precision"].string_value == "fp32"
    assert start.hparams["training.patience"].string_value == "null"


def test_a_resumed_run_logs_each_step_once(small_corpus, tmp_path):
    config = tiny_config(small_corpus, training={"max_steps": 20, "eval_interval": 10, "log_interval": 5})
    train(config, tmp_path / "run", quiet=True, on_step=lambda step, m: step == 13)
    train(config, tmp_path / "run", quiet=True, resume=True)
    scalars = _scalars(RunDir(tmp_path / "run").tensorboard_dir)
    assert scalars["train/loss"] == [5, 10, 15, 20] and scalars["val/loss"] == [10, 20]
    assert scalars["hparam/best_val_loss"] == [20]  # the interrupted run's, at step 13, purged


def test_turned_off_it_writes_nothing(small_corpus, tmp_path):
    config = tiny_config(small_corpus, training={"max_steps": 10, "tensorboard": False})
    train(config, tmp_path / "run", quiet=True)
    assert not RunDir(tmp_path / "run").tensorboard_dir.exists()
