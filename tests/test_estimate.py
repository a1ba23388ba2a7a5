"""heterolora_core.analysis.estimate (a run's wall time before it starts, from the store's records)
and planning.run_size, with hand-computed numbers."""
import pytest

from heterolora_core.analysis import estimate as E
from heterolora_core.records.record import RunSummary
from heterolora_core.records.store import StoredRun
from heterolora_core.training.run_config import RunConfig

P = 20_000_000  # a model of 20M parameters


def record(wall, steps, *, device="cpu", batch=16, mode="dynamic", model="embedded", status="done", process=None,
           parallel=None, run_id="r"):
    summary = {"status": status, "wall_seconds": wall, "step": steps, "device": device, "parallel_runs": parallel}
    if process is not None:
        summary["process_seconds"] = process
    return StoredRun(run_id, None, 0.0, None, None,
                     RunConfig(mode=mode, model=model, batch_size=batch),
                     RunSummary.from_dict({k: v for k, v in summary.items() if v is not None}))


def test_planned_steps():
    assert E.planned_steps(RunConfig(max_steps=32, train_limit=256), 3667) == 32
    # 3667 rows / batch 16 = 230 steps per epoch, 3 epochs (the full MRPC run)
    assert E.planned_steps(RunConfig(epochs=3.0, batch_size=16), 3667) == 690
    assert E.planned_steps(RunConfig(epochs=2.0, batch_size=16, train_limit=100), 3667) == 14  # ceil(100/16) = 7
    assert E.planned_steps(RunConfig(epochs=0.5, batch_size=16), 160) == 5
    assert E.planned_steps(RunConfig(), None) is None


def test_measured_speeds_keep_what_ran_alone_on_the_device():
    rows = [record(700.0, 700, process=710.0, run_id="alone"),
            record(100.0, 700, device="cuda", run_id="gpu"),
            record(50.0, 700, device="cuda", parallel=14, run_id="shared"),
            record(700.0, 700, status="failed", run_id="failed"),
            record(700.0, 700, model="unknown-size", run_id="unsized"),
            record(700.0, 0, run_id="no-steps")]
    rows.append(StoredRun("old", None, 0.0, None, None, RunConfig(batch_size=16),
                          RunSummary.from_dict({"status": "done", "wall_seconds": 350.0, "step": 700})))  # no device: cpu
    cpu = E.measured_speeds(rows, "cpu", {"embedded": P})
    assert [s.run_id for s in cpu] == ["alone", "old"]
    assert cpu[0].rate == pytest.approx(1.0 / (P * 16)) and cpu[0].startup == pytest.approx(10.0)
    assert cpu[1].startup is None
    assert [s.run_id for s in E.measured_speeds(rows, "cuda:0", {"embedded": P})] == ["gpu"]


def test_estimate_from_records_by_hand():
    # 1.0, 0.5 and 0.75 s per step at 20M parameters, batch 16; startups 10 and 6 s
    speeds = E.measured_speeds([record(700.0, 700, process=710.0), record(350.0, 700, process=356.0),
                                record(525.0, 700)], "cpu", {"embedded": P})
    config = RunConfig(mode="dynamic", model="embedded", batch_size=16, max_steps=32)
    est = E.estimate_run_time(config, 32, P, "cpu", speeds)
    assert est.seconds_per_step == pytest.approx(0.75) and est.startup_seconds == pytest.approx(8.0)
    assert est.seconds == pytest.approx(8.0 + 32 * 0.75)
    assert (est.low, est.high) == pytest.approx((8.0 + 32 * 0.5, 8.0 + 32 * 1.0))  # under four records: the extremes
    assert est.n_records == 3 and "the same model and method" in est.basis
    # twice the batch and half the parameters: the same seconds per step
    other = E.estimate_run_time(RunConfig(mode="dynamic", batch_size=32), 10, P // 2, "cpu", speeds)
    assert other.seconds_per_step == pytest.approx(0.75)
    # another method of the same model falls back to the model's records; another model is scaled by size
    assert "the same model" in E.estimate_run_time(RunConfig(mode="lora"), 10, P, "cpu", speeds).basis
    scaled = E.estimate_run_time(RunConfig(mode="lora", model="bigger"), 10, 2 * P, "cpu", speeds)
    assert scaled.seconds_per_step == pytest.approx(1.5) and "scaled by size" in scaled.basis


def test_estimate_quartiles_from_four_records():
    speeds = E.measured_speeds([record(s * 100.0, 100) for s in (0.4, 0.6, 0.8, 1.0)], "cpu", {"embedded": P})
    est = E.estimate_run_time(RunConfig(), 100, P, "cpu", speeds)
    # inclusive quartiles of 0.4, 0.6, 0.8, 1.0: 0.55, 0.70, 0.85
    assert est.seconds_per_step == pytest.approx(0.70)
    assert (est.low, est.high) == pytest.approx((E.DEFAULT_STARTUP_SECONDS + 55.0, E.DEFAULT_STARTUP_SECONDS + 85.0))


def test_estimate_without_records_uses_the_stated_default():
    est = E.estimate_run_time(RunConfig(batch_size=16), 690, E.EMBEDDED_PARAMS, "cpu", [])
    assert est.n_records == 0 and est.seconds_per_step == pytest.approx(E.DEFAULT_SECONDS_PER_STEP["cpu"])
    assert est.seconds == pytest.approx(E.DEFAULT_STARTUP_SECONDS + 690 * 0.7)
    assert "no finished cpu run" in est.basis and "default" in est.basis
    assert E.estimate_run_time(RunConfig(), 10, E.EMBEDDED_PARAMS, "cuda:1", []).seconds_per_step == pytest.approx(0.05)
    unknown = E.estimate_run_time(RunConfig(), None, E.EMBEDDED_PARAMS, "cpu", [])
    assert unknown.seconds is None and unknown.steps is None


def test_run_size_of_the_short_run(monkeypatch):
    """planning.run_size on the embedded model and the real MRPC files (GLUE_DIR): 256 training rows,
    200 dev rows evaluated, 137 of them the majority label (68.5%), 279 of the 408 (68.38%)."""
    import os

    from dashboard.components.forms import SHORT_RUN, launch_config
    from heterolora_core.planning import majority_rate, run_size

    assert majority_rate([1, 1, 0, 1]) == 0.75 and majority_rate([]) is None
    if not os.environ.get("GLUE_DIR"):
        pytest.skip("GLUE_DIR is not set")
    size = run_size(RunConfig.from_dict(launch_config(SHORT_RUN)))
    assert (size.model_params, size.train_rows, size.dev_rows) == (E.EMBEDDED_PARAMS, 256, 200)
    assert size.majority_rate == pytest.approx(137 / 200) and size.split_majority_rate == pytest.approx(279 / 408)
    assert size.device in ("cpu", "cuda")
