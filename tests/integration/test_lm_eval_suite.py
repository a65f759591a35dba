"""An lm-evaluation-harness suite whose data are local files, run by the worker with
HFLM(pretrained=…, peft=…): the scores equal lm-eval's own run on the same files."""

from __future__ import annotations

import json

import pytest

from registry.clientside.suites import add_suite
from registry.clientside.transfer import push, register_base_dir
from registry.evals.schemas import AttachSuiteIn
from tests.peft_factory import save_base, save_char_tokenizer, tiny_llama

pytestmark = pytest.mark.slow

TASK = """task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: data/items.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
ITEMS = [{"question": "Q: 1+1=", "choices": [" 2", " 3"], "answer": 0},
         {"question": "Q: the sky is", "choices": [" blue", " green"], "answer": 0},
         {"question": "Q: cats say", "choices": [" woof", " meow"], "answer": 1},
         {"question": "Q: ice is", "choices": [" cold", " hot"], "answer": 0}]


@pytest.mark.parametrize("settings", ["sqlite-local"], indirect=True)
def test_lm_eval_suite_runs_on_local_files(settings, tmp_path, adapters_dir, monkeypatch):
    harness = pytest.importorskip("lm_eval")
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from registry.clientside.worker.loop import Worker
    from registry.local import LocalRegistry

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    base = save_char_tokenizer(save_base(tiny_llama(), tmp_path / "tiny-llama"))
    task_dir = tmp_path / "task"
    (task_dir / "data").mkdir(parents=True)
    (task_dir / "task.yaml").write_text(TASK)
    (task_dir / "data" / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in ITEMS))

    backend = LocalRegistry(settings)
    try:
        register_base_dir(backend, name="tiny-llama", directory=base, settings=settings)
        suite, _ = add_suite(backend, name="choice", file=task_dir / "task.yaml",
                             kind="lm-eval", options={"batch_size": "2"}, settings=settings)
        assert sorted(f.path for f in suite.files) == ["data/items.jsonl", "task.yaml"]
        assert suite.item_count == len(ITEMS)
        push(backend, name="bot", directory=adapters_dir["lora"], settings=settings,
             base_model="tiny-llama")
        backend.attach_suite("choice", AttachSuiteIn(adapter="bot"))
        worker = Worker(backend=backend, settings=settings, device="cpu", once=True,
                        cache_dir=tmp_path / "cache", log=lambda _: None)
        worker.run()
        [job] = backend.list_jobs()
        assert (job.status, job.verdict) == ("succeeded", "validated"), job.error
        scores = {s.metric: s for s in backend.get_version("bot", 1).scores
                  if s.suite == "choice"}
    finally:
        backend.close()

    # lm-eval's own run of the original files, with the same base and adapter (relative
    # data_files resolve against the working directory).
    monkeypatch.chdir(task_dir)
    lm = HFLM(pretrained=str(base), peft=str(adapters_dir["lora"]), device="cpu",
              dtype="float32", batch_size=2)
    out = harness.simple_evaluate(model=lm, tasks=["tiny_choice"],
                                  task_manager=TaskManager(include_path=str(task_dir),
                                                           include_defaults=False))
    expected = out["results"]["tiny_choice"]
    assert scores["acc,none"].value == pytest.approx(expected["acc,none"])
    assert scores["acc,none"].n == len(ITEMS) and scores["acc,none"].source == "worker"
