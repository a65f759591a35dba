"""The worker's attach/detach on a cached base, against fresh models: after any sequence of
adapters the base equals a freshly loaded one, bit for bit; what PEFT drops is counted; an
adapter that writes into the base's own weights is caught and the base reloaded."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from registry.clientside.worker import checks
from registry.clientside.worker.device import resolve_device
from registry.clientside.worker.models import ModelCache, main_output, model_class
from tests.integration import worker_helpers as wh
from tests.peft_factory import save_base, tiny_llama

pytestmark = pytest.mark.slow

SEQUENCE = ["lora", "dora", "ia3", "modules_to_save", "loha", "lokr", "lora_rank_pattern",
            "prompt_tuning", "lora_v2"]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_base(tiny_llama(), tmp_path_factory.mktemp("checks") / "tiny-llama")


@pytest.fixture
def cache() -> ModelCache:
    return ModelCache(resolve_device("cpu"), max_loaded=1)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def test_base_after_detach_equals_a_fresh_base(cache, llama_dir, adapters_dir):
    cls = model_class("CAUSAL_LM", None)
    base, hit = cache.get(llama_dir, key="llama", cls=cls)
    assert not hit
    fresh = AutoModelForCausalLM.from_pretrained(str(llama_dir)).eval()
    modules = [type(m) for m in base.model.modules()]
    for i, kind in enumerate(SEQUENCE):
        attached = checks.attach(base, adapters_dir[kind], name=f"job{i}_a1")
        assert attached.load.dropped == [] and attached.load.missing == [], kind
        assert attached.load.applied_tensors == attached.load.file_tensors > 0
        result = checks.smoke(base, attached)
        assert result.passed, (kind, result.findings)
        # The adapted outputs are PEFT's own: the same adapter loaded the usual way agrees.
        reference = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(str(llama_dir)), str(adapters_dir[kind])).eval()
        for ids in base.probes:
            assert torch.equal(main_output(attached.model(input_ids=ids)),
                               main_output(reference(input_ids=ids))), kind
        checks.detach(base, attached)
        assert checks.base_unchanged(base) is None, kind
        again, hit = cache.get(llama_dir, key="llama", cls=cls)
        assert hit and again is base
    assert [type(m) for m in base.model.modules()] == modules  # no PEFT layer left behind
    fresh_state, cached_state = _state(fresh), _state(base.model)
    assert fresh_state.keys() == cached_state.keys()
    assert all(torch.equal(fresh_state[k], cached_state[k]) for k in fresh_state)
    for ids, out in zip(base.probes, base.outputs, strict=True):
        assert torch.equal(main_output(fresh(input_ids=ids)), out)


def test_tensors_peft_drops_are_counted_and_named(cache, llama_dir, adapters_dir, tmp_path):
    bad = wh.variant(adapters_dir["lora"], tmp_path / "dropped", wh.add_unused_module,
                     wh.save_unused_module)
    base, _ = cache.get(llama_dir, key="llama", cls=model_class("CAUSAL_LM", None))
    attached = checks.attach(base, bad, name="job1_a1")
    load = attached.load
    assert load.dropped == ["base_model.model.score.weight"]
    assert (load.file_tensors, load.applied_tensors) == (9, 8)
    [finding] = checks.load_findings(load)
    assert finding.code == "tensors_dropped" and "score.weight" in finding.message
    checks.detach(base, attached)
    assert checks.base_unchanged(base) is None


def test_missing_adapter_tensors_are_reported(cache, llama_dir, adapters_dir, tmp_path):
    def drop_one_b(tensors: dict[str, torch.Tensor]) -> None:
        del tensors[sorted(k for k in tensors if "lora_B" in k)[0]]

    partial = wh.variant(adapters_dir["lora"], tmp_path / "partial", drop_one_b)
    base, _ = cache.get(llama_dir, key="llama", cls=model_class("CAUSAL_LM", None))
    attached = checks.attach(base, partial, name="job2_a1")
    assert len(attached.load.missing) == 1 and "lora_B" in attached.load.missing[0]
    assert [f.code for f in checks.load_findings(attached.load)] == ["tensors_missing"]
    checks.detach(base, attached)


def test_an_adapter_that_writes_base_weights_is_caught(cache, llama_dir, adapters_dir,
                                                       tmp_path):
    # A saved "resized embedding" loads straight into the base's own embed_tokens: after
    # detaching, the base is not what it was.
    leaky = tmp_path / "leaky"
    shutil.copytree(adapters_dir["lora"], leaky)
    tensors = load_file(str(leaky / "adapter_model.safetensors"))
    tensors["base_model.model.model.embed_tokens.weight"] = torch.zeros(128, 32)
    save_file(tensors, str(leaky / "adapter_model.safetensors"))
    base, _ = cache.get(llama_dir, key="llama", cls=model_class("CAUSAL_LM", None))
    attached = checks.attach(base, leaky, name="job3_a1")
    checks.detach(base, attached)
    finding = checks.base_unchanged(base)
    assert finding is not None and finding.code == "base_changed"
    assert "reloaded" in finding.message
    cache.evict(base)
    reloaded, hit = cache.get(llama_dir, key="llama", cls=model_class("CAUSAL_LM", None))
    assert not hit and checks.base_unchanged(reloaded) is None


def test_load_per_job_keeps_nothing(llama_dir):
    cache = ModelCache(resolve_device("cpu"), max_loaded=0)
    cls = model_class("CAUSAL_LM", None)
    base, _ = cache.get(llama_dir, key="llama", cls=cls)
    cache.release(base)
    assert "llama:" + cls.__name__ not in cache
    _, hit = cache.get(llama_dir, key="llama", cls=cls)
    assert hit is False
