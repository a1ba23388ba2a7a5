"""``train --report-to``: trackers are passed to the Trainer only when asked, and a missing
package is a one-line refusal before anything runs."""
from __future__ import annotations

import importlib.util

import pytest

from cli_helpers import cli_env, run_cli, save_tiny_bert
from heterolora_core.training.environment import check_report_to
from heterolora_core.training.run_config import RunConfig
from heterolora_core.training.trainer import training_arguments


def test_check_report_to_names_the_missing_package():
    everything = lambda package: True  # noqa: E731
    nothing = lambda package: None  # noqa: E731
    assert check_report_to(["mlflow", "tensorboard", "mlflow"], everything) == ["mlflow", "tensorboard"]
    assert check_report_to([], nothing) == []
    with pytest.raises(ValueError, match="needs the wandb package: pip install wandb"):
        check_report_to(["tensorboard", "wandb"], lambda package: package == "tensorboard")
    with pytest.raises(ValueError, match="unknown --report-to 'comet'"):
        check_report_to(["comet"], everything)


def test_trainer_reports_nowhere_unless_asked(tmp_path):
    config = RunConfig()
    assert training_arguments(config, None, "cpu", 10, False).report_to == []
    assert training_arguments(config, None, "cpu", 10, False, report_to=["mlflow"]).report_to == ["mlflow"]


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_cli_refuses_a_tracker_whose_package_is_missing(tmp_path):
    done = run_cli("train", "--report-to", "wandb", "--out", tmp_path / "run", env=cli_env(tmp_path / "home"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: --report-to wandb needs the wandb package: pip install wandb"]
    assert not (tmp_path / "run").exists()


def test_tensorboard_curves_land_in_the_run_folder(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not a dependency; install it to run this test")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from heterolora_core.training.trainer import run_training

    model_dir = save_tiny_bert(tmp_path / "bert", layers=1)
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(f'{{"text": "row {i} is {"good" if i % 2 else "bad"}", "label": {i % 2}}}\n'
                            for i in range(16)))
    config = RunConfig(model=str(model_dir), train_file=str(data), dev_file=str(data), mode="lora", shortcuts=False,
                       max_steps=4, batch_size=4, max_length=16, logging_steps=1, device="cpu")
    record = run_training(config, tmp_path / "run", progress=False, report_to=["tensorboard"])
    events = EventAccumulator(str(record.path / "tensorboard")).Reload()
    assert len(events.Scalars("train/loss")) == 4
    assert not (record.path / ".trainer").exists()
