"""GLUE metrics: the local evaluate module against scikit-learn and SciPy, headline keys, edge cases."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from heterolora_core.training.data import TASKS
from heterolora_core.training.metrics import (GLUE_METRIC_DIR, compute_metrics, headline_metric, load_glue_metric,
                                              logits_to_predictions)

ACCURACY_ONLY = ("sst2", "mnli", "qnli", "rte", "wnli")


def random_classes(seed: int, n: int = 200, k: int = 2):
    rng = np.random.default_rng(seed)
    return rng.integers(0, k, n), rng.integers(0, k, n)


@pytest.mark.parametrize("task", ACCURACY_ONLY)
def test_accuracy_tasks(task):
    k = TASKS[task].num_labels
    predictions, references = random_classes(1, k=k)
    scores = compute_metrics(task, predictions, references)
    assert scores == pytest.approx({"accuracy": accuracy_score(references, predictions)})


@pytest.mark.parametrize("task", ["mrpc", "qqp"])
def test_accuracy_and_f1_tasks(task):
    predictions, references = random_classes(2)
    scores = compute_metrics(task, predictions, references)
    assert scores == pytest.approx({"accuracy": accuracy_score(references, predictions),
                                    "f1": f1_score(references, predictions)})


def test_cola_matthews():
    predictions, references = random_classes(3)
    scores = compute_metrics("cola", predictions, references)
    assert scores == pytest.approx({"matthews_correlation": matthews_corrcoef(references, predictions)})


def test_stsb_pearson_and_spearman():
    rng = np.random.default_rng(4)
    references = rng.uniform(0, 5, 300)
    predictions = references + rng.normal(0, 1.5, 300)
    scores = compute_metrics("stsb", predictions, references)
    assert scores == pytest.approx({"pearson": pearsonr(predictions, references)[0],
                                    "spearmanr": spearmanr(predictions, references)[0]}, abs=1e-12)
    assert 0.3 < scores["pearson"] < 0.95


@pytest.mark.parametrize("task", list(TASKS))
def test_headline_is_a_computed_key(task):
    if TASKS[task].is_regression:
        predictions, references = np.linspace(0, 5, 20), np.linspace(0, 5, 20) ** 2
    else:
        predictions, references = random_classes(5, n=20, k=TASKS[task].num_labels)
    scores = compute_metrics(task, predictions, references)
    assert headline_metric(task) in scores
    assert all(type(value) is float for value in scores.values())


def test_headlines():
    assert {task: headline_metric(task) for task in TASKS} == {
        "cola": "matthews_correlation", "sst2": "accuracy", "mrpc": "accuracy", "stsb": "pearson",
        "qqp": "accuracy", "mnli": "accuracy", "qnli": "accuracy", "rte": "accuracy", "wnli": "accuracy"}
    assert headline_metric("custom", is_regression=True) == "pearson"
    assert headline_metric("custom", is_regression=False) == "accuracy"


def test_custom_data_metrics():
    predictions, references = random_classes(6, k=4)
    assert compute_metrics("custom", predictions, references, is_regression=False) == pytest.approx(
        {"accuracy": accuracy_score(references, predictions)})
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=50), rng.normal(size=50)
    assert compute_metrics("custom", x, y, is_regression=True) == pytest.approx(
        {"pearson": pearsonr(x, y)[0], "spearmanr": spearmanr(x, y)[0]})
    with pytest.raises(ValueError, match="is_regression"):
        compute_metrics("custom", x, y)


@pytest.mark.filterwarnings("ignore:A single label was found")  # scikit-learn's note on this very case
def test_single_class_matthews_is_zero_like_sklearn():
    ones = np.ones(10, dtype=int)
    mixed = np.array([0, 1] * 5)
    for predictions, references in ((ones, ones), (mixed, ones), (ones, mixed)):
        expected = matthews_corrcoef(references, predictions)
        assert compute_metrics("cola", predictions, references) == {"matthews_correlation": expected}
        assert expected == 0.0


def test_f1_without_positives_is_zero():
    zeros = np.zeros(8, dtype=int)
    references = np.array([0, 1] * 4)
    assert compute_metrics("mrpc", zeros, references) == {"accuracy": 0.5, "f1": 0.0}
    assert f1_score(references, zeros, zero_division=0.0) == 0.0


def test_constant_regression_predictions_score_zero_not_nan():
    scores = compute_metrics("stsb", np.full(10, 2.5), np.linspace(0, 5, 10))
    assert scores == {"pearson": 0.0, "spearmanr": 0.0}


def test_bad_inputs():
    with pytest.raises(ValueError, match="same length"):
        compute_metrics("rte", [0, 1], [0])
    with pytest.raises(ValueError, match="non-empty"):
        compute_metrics("rte", [], [])
    with pytest.raises(ValueError, match="unknown task 'glue'"):
        headline_metric("glue")


def test_evaluate_loads_the_local_folder_directly():
    import evaluate

    metric = evaluate.load(str(GLUE_METRIC_DIR), config_name="qqp")
    assert metric.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0]) == pytest.approx(
        {"accuracy": 0.75, "f1": 2 / 3})
    assert load_glue_metric("cola").config_name == "cola"
    with pytest.raises(KeyError, match="unknown GLUE metric config"):
        evaluate.load(str(GLUE_METRIC_DIR), config_name="squad")


def test_logits_to_predictions():
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]])
    assert logits_to_predictions(logits, is_regression=False).tolist() == [1, 0]
    assert logits_to_predictions(np.array([[0.5], [4.25]]), is_regression=True).tolist() == [0.5, 4.25]
    assert logits_to_predictions(np.array([0.5, 4.25]), is_regression=True).tolist() == [0.5, 4.25]
    assert logits_to_predictions((logits, np.zeros((2, 5, 4))), is_regression=False).tolist() == [1, 0]
    with pytest.raises(ValueError, match="one output per row"):
        logits_to_predictions(logits, is_regression=True)


def test_logits_to_predictions_from_torch_bfloat16():
    torch = pytest.importorskip("torch")
    logits = torch.tensor([[0.0, 1.0], [2.0, -2.0]], dtype=torch.bfloat16, requires_grad=True)
    assert logits_to_predictions(logits, is_regression=False).tolist() == [1, 0]
    regression = torch.tensor([[1.5], [2.5]], dtype=torch.bfloat16)
    assert logits_to_predictions(regression, is_regression=True).tolist() == [1.5, 2.5]
