"""The dashboard's launch form (dashboard.components.forms: SHORT_RUN, launch_config, check_launch,
parse_seeds, LaunchError) on the engine's own checks and budget planner
(heterolora_core.planning.check_run). The store-side tests are in tests/test_store.py."""
import pytest

from dashboard.components.forms import SHORT_RUN, LaunchError, check_launch, launch_config, parse_seeds
from heterolora_core.sweeps import proxy_sweep
from heterolora_core.training.run_config import RunConfig


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch):
    """A hub id is checked against the local cache only: no test reaches the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_short_run_is_a_valid_config():
    config = launch_config(SHORT_RUN)
    assert RunConfig.from_dict(config).to_cli_args()  # every value is CLI-expressible
    assert config["mode"] == "dynamic" and config["model"] == "embedded"
    with pytest.raises(LaunchError, match="unknown run settings"):
        launch_config({"rnak": 3})


@pytest.mark.parametrize("change, message", [
    ({"rank": 0}, "rank must be at least 1"),
    ({"enable_ratio": 0.0}, "enable ratio must be in"),
    ({"enable_ratio": 1.5}, "enable ratio must be in"),
    ({"lora_targets": [], "shortcuts": False}, "search space is empty"),
    ({"model": "  "}, "choose a model"),
    ({"model": "nobody/no-such-model"}, "does not exist"),
    ({"enable_ratio": 0.01}, "enables nothing"),
    ({"task": "nosuchtask"}, "unknown task"),
])
def test_check_launch_refuses_bad_input_with_one_line(change, message):
    with pytest.raises(LaunchError, match=message) as info:
        check_launch(launch_config({**SHORT_RUN, **change}))
    assert "\n" not in str(info.value)


def test_check_launch_returns_the_plan():
    plan = check_launch(launch_config(SHORT_RUN))
    assert plan.n_enabled == 9 and plan.trainable_params == 9 * 32 * 768
    lora = check_launch(launch_config({**SHORT_RUN, "mode": "lora", "rank": 8, "enable_ratio": 0.0}))
    assert lora.n_enabled == 35  # the enable ratio does not apply to uniform LoRA


def test_check_launch_with_the_engine_budget_planner():
    """The real planner (imports torch): the default short run on the embedded model."""
    plan = check_launch(launch_config(SHORT_RUN))
    assert (plan.n_lora, plan.n_shortcut, plan.n_enabled) == (12, 23, 9)
    assert plan.trainable_params == 9 * 32 * 768
    assert "rank 24" in plan.uniform_equivalent
    with pytest.raises(LaunchError, match="enables nothing"):
        check_launch(launch_config({**SHORT_RUN, "enable_ratio": 0.01}))


def test_parse_seeds():
    assert parse_seeds("0, 13 42,13") == [0, 13, 42]
    for bad in ("", "a", "1.5", "-1"):
        with pytest.raises(LaunchError):
            parse_seeds(bad)


def test_sweep_without_a_proxy_is_refused():
    """The form side of the old sweep test (its store side is
    tests/test_store.py::test_sweep_queues_one_run_per_proxy_and_seed): a sweep needs a proxy and a
    seed, refused with one line before anything is queued."""
    with pytest.raises(ValueError, match="at least one proxy") as info:
        proxy_sweep(RunConfig(), [], [0])
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="at least one seed"):
        proxy_sweep(RunConfig(), ["grad_norm"], [])
