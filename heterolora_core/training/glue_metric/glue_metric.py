"""GLUE metrics as a local ``evaluate`` module, so scoring needs no download from the hub.

Load it with ``evaluate.load("<path to this folder>", config_name=<config>)``; ``evaluate`` finds the
script because it has the folder's name. Configs and what ``compute`` returns (GLUE conventions):

    cola                          {"matthews_correlation"}
    mrpc, qqp                     {"accuracy", "f1"}            (binary F1 of class 1)
    stsb, regression              {"pearson", "spearmanr"}
    sst2, mnli, qnli, rte, wnli,  {"accuracy"}                  (MNLI: matched and mismatched alike)
    classification

``classification`` and ``regression`` score users' own data. Predictions and references are class
ids (int) for classification configs and floats for the regression ones.

Degenerate inputs score 0.0 instead of NaN: Matthews correlation with a single class (as
scikit-learn does), F1 with no positive prediction or reference (scikit-learn's
``zero_division=0``), Pearson / Spearman when either side is constant (where SciPy returns NaN).
Every score is a plain float, so it goes into JSON as is.
"""
import datasets
import evaluate
import numpy as np
from scipy.stats import pearsonr
from scipy.stats import spearmanr
from sklearn.metrics import f1_score
from sklearn.metrics import matthews_corrcoef

# evaluate parses this file's imports to check dependencies, one module per import line, hence the
# split imports above.

ACCURACY_CONFIGS = ("sst2", "mnli", "qnli", "rte", "wnli", "classification")
ACCURACY_F1_CONFIGS = ("mrpc", "qqp")
MCC_CONFIGS = ("cola",)
CORRELATION_CONFIGS = ("stsb", "regression")
CONFIGS = ACCURACY_CONFIGS + ACCURACY_F1_CONFIGS + MCC_CONFIGS + CORRELATION_CONFIGS

_DESCRIPTION = "GLUE benchmark metrics: accuracy, binary F1, Matthews correlation, Pearson and Spearman."
_CITATION = """\
@inproceedings{wang2019glue,
  title={{GLUE}: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding},
  author={Wang, Alex and Singh, Amanpreet and Michael, Julian and Hill, Felix and Levy, Omer and Bowman, Samuel R.},
  booktitle={International Conference on Learning Representations},
  year={2019}
}
"""
_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted class ids, or floats for stsb / regression.
    references: gold class ids, or floats for stsb / regression.
Returns: a dict of floats, keys by config as listed in the module docstring.
Example:
    >>> metric = evaluate.load("heterolora_core/glue_metric", config_name="mrpc")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'accuracy': 0.6666666666666666, 'f1': 0.6666666666666666}
"""


def _correlation(fn, predictions: np.ndarray, references: np.ndarray) -> float:
    # a correlation with a constant side is undefined; score it as "no correlation"
    if np.ptp(predictions) == 0 or np.ptp(references) == 0:
        return 0.0
    return float(fn(predictions, references)[0])


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GlueMetric(evaluate.Metric):
    """The GLUE metric for one config (task); see the module docstring."""

    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in CONFIGS:
            raise KeyError(f"unknown GLUE metric config {self.config_name!r}; valid: {', '.join(CONFIGS)}")
        dtype = "float64" if self.config_name in CORRELATION_CONFIGS else "int64"
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value(dtype),
                                        "references": datasets.Value(dtype)}),
            # no format="numpy": the datasets NumPy formatter casts floats to float32
        )

    def _compute(self, predictions: list, references: list) -> dict[str, float]:
        predictions, references = np.asarray(predictions), np.asarray(references)
        if self.config_name in MCC_CONFIGS:
            return {"matthews_correlation": float(matthews_corrcoef(references, predictions))}
        if self.config_name in CORRELATION_CONFIGS:
            return {"pearson": _correlation(pearsonr, predictions, references),
                    "spearmanr": _correlation(spearmanr, predictions, references)}
        scores = {"accuracy": float((predictions == references).mean())}
        if self.config_name in ACCURACY_F1_CONFIGS:
            scores["f1"] = float(f1_score(references, predictions, zero_division=0.0))
        return scores
