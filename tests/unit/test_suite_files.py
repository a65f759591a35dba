"""Eval suite files and options (registry.evals.suites): bad lines named, kinds, fit rules."""

from __future__ import annotations

import json

import pytest

from registry.db.enums import SuiteKind
from registry.errors import InvalidInput, TooLarge
from registry.evals.suites import (
    check_jsonl,
    check_kind,
    check_options,
    check_suite_files,
    parse_lm_eval_yaml,
    suite_fit,
)


def lines(*items: object) -> bytes:
    return "".join((i if isinstance(i, str) else json.dumps(i)) + "\n" for i in items).encode()


def test_good_files_count_items():
    assert check_jsonl(SuiteKind.perplexity, lines({"text": "a b"}, "", {"text": "c"})) == 2
    assert check_jsonl(SuiteKind.generate, lines(
        {"prompt": "p", "expected": "x", "match": "exact"}, {"prompt": "p", "expected": "y"},
        {"prompt": "p", "expected": "^a+$", "match": "regex"})) == 3
    assert check_jsonl(SuiteKind.classify, lines({"text": "t", "label": 1},
                                                 {"text": "u", "label": "positive"})) == 2


@pytest.mark.parametrize(("kind", "data", "fragment"), [
    (SuiteKind.perplexity, lines({"text": "a"}, '{"text": "b"', {"text": "c"}),
     "ppl.jsonl line 2: invalid JSON"),
    (SuiteKind.perplexity, lines({"text": "a"}, {"txt": "b"}), "line 2: missing field 'text'"),
    (SuiteKind.perplexity, lines({"text": 3}), "line 1: field 'text' must be a str"),
    (SuiteKind.perplexity, lines({"text": "  "}), "line 1: field 'text' is empty"),
    (SuiteKind.perplexity, lines("[1, 2]"), "line 1: expected a JSON object"),
    (SuiteKind.perplexity, b"", "ppl.jsonl is empty"),
    (SuiteKind.perplexity, b"\n\n  \n", "ppl.jsonl is empty"),
    (SuiteKind.perplexity, b'{"text": "a"}\n\xff\xfe\n', "line 2: not UTF-8"),
    (SuiteKind.generate, lines({"prompt": "p"}), "line 1: missing field 'expected'"),
    (SuiteKind.generate, lines({"prompt": "p", "expected": "x", "match": "fuzzy"}),
     "line 1: match must be one of"),
    (SuiteKind.generate, lines({"prompt": "p", "expected": "(", "match": "regex"}),
     "line 1: expected is not a valid regex"),
    (SuiteKind.classify, lines({"text": "t", "label": 1.5}), "field 'label' must be a int"),
    (SuiteKind.classify, lines({"text": "t", "label": True}), "field 'label' must be a int"),
    (SuiteKind.classify, lines({"text": "t", "label": -1}), "label index must be >= 0"),
])
def test_bad_files_name_the_line(kind, data, fragment):
    with pytest.raises(InvalidInput) as exc:
        check_jsonl(kind, data, path="ppl.jsonl")
    assert fragment in exc.value.detail


def test_item_limit():
    with pytest.raises(TooLarge):
        check_jsonl(SuiteKind.perplexity, lines(*({"text": "x"} for _ in range(6))),
                    max_items=5)


def test_kinds_and_options():
    assert check_kind("lm-eval") is SuiteKind.lm_eval
    with pytest.raises(InvalidInput, match="unknown suite kind 'bleu'; use one of perplexity"):
        check_kind("bleu")
    assert check_options(SuiteKind.generate, {}) == {"max_new_tokens": 32}
    assert check_options(SuiteKind.generate, {"max_new_tokens": "8"}) == {"max_new_tokens": 8}
    assert check_options(SuiteKind.perplexity, {}) == {}
    for kind, bad, fragment in [
        (SuiteKind.generate, {"max_new_tokens": "0"}, "outside 1..4096"),
        (SuiteKind.generate, {"max_new_tokens": "many"}, "expected an integer"),
        (SuiteKind.classify, {"temperature": "1"}, "has no option 'temperature'"),
        (SuiteKind.perplexity, {"max_length": True}, "expected an integer"),
    ]:
        with pytest.raises(InvalidInput, match=fragment):
            check_options(kind, bad)


TASK = """
task: tiny_qa
dataset_path: json
dataset_kwargs:
  data_files:
    test: data.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
metric_list:
  - metric: acc
"""


def test_lm_eval_task_with_local_data():
    files = {"task.yaml": TASK.encode(),
             "data.jsonl": lines({"question": "q", "choices": ["a", "b"], "answer": 0})}
    assert check_suite_files(SuiteKind.lm_eval, files) == 1
    with pytest.raises(InvalidInput, match=r"data file 'data\.jsonl' is not part of the suite"):
        check_suite_files(SuiteKind.lm_eval, {"task.yaml": TASK.encode()})


@pytest.mark.parametrize(("text", "fragment"), [
    (TASK.replace("dataset_path: json", "dataset_path: cais/mmlu"), "must be local files"),
    (TASK.replace("test: data.jsonl", "test: /etc/passwd"), "relative path inside the suite"),
    (TASK.replace("test: data.jsonl", "test: ../x.jsonl"), "relative path inside the suite"),
    (TASK + "process_docs: !function utils.process_docs\n", "!function tags are refused"),
    (TASK.replace("task: tiny_qa", "include: other.yaml"), "missing 'task'"),
    (TASK + "include: base.yaml\n", "'include' is not supported"),
    ("task: t\ndataset_path: json\n\tbad: 1\n", "task.yaml line 3: invalid task YAML"),
    ("- a list\n", "expected a mapping"),
])
def test_lm_eval_refusals(text, fragment):
    with pytest.raises(InvalidInput) as exc:
        parse_lm_eval_yaml(text.encode(), path="task.yaml")
    assert fragment in exc.value.detail


def test_suite_shape():
    with pytest.raises(InvalidInput, match="one JSON-lines file"):
        check_suite_files(SuiteKind.perplexity, {"a.jsonl": b"", "b.jsonl": b""})
    with pytest.raises(InvalidInput, match="exactly one task YAML"):
        check_suite_files(SuiteKind.lm_eval, {"data.jsonl": b"{}"})


def test_fit_follows_the_task_type_then_the_base():
    assert suite_fit(SuiteKind.perplexity, task_type="CAUSAL_LM", architectures=[]) is None
    assert suite_fit(SuiteKind.classify, task_type="SEQ_CLS", architectures=None) is None
    reason = suite_fit(SuiteKind.classify, task_type="CAUSAL_LM", architectures=None)
    assert reason == ("a classify suite needs a sequence classifier (task type SEQ_CLS); the "
                      "adapter's task type is CAUSAL_LM")
    assert "task type CAUSAL_LM" in (suite_fit(SuiteKind.lm_eval, task_type="SEQ_CLS",
                                               architectures=None) or "")
    assert suite_fit(SuiteKind.generate, task_type=None,
                     architectures=["GPT2LMHeadModel"]) is None
    assert "BertForSequenceClassification" in (suite_fit(
        SuiteKind.perplexity, task_type=None,
        architectures=["BertForSequenceClassification"]) or "")
