"""Validation on a CUDA device in bfloat16 (skipped without CUDA): the same checks as on the CPU,
the base bit for bit after detaching, and out of memory failing the job, not the worker."""

from __future__ import annotations

import pytest
import torch

from registry.clientside.transfer import push, register_base_dir
from registry.clientside.worker import checks
from registry.clientside.worker.device import resolve_device
from registry.clientside.worker.loop import Worker
from registry.clientside.worker.models import ModelCache, main_output, model_class
from tests.peft_factory import save_base, save_char_tokenizer, tiny_llama

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture
def llama_dir(tmp_path):
    return save_char_tokenizer(save_base(tiny_llama(), tmp_path / "tiny-llama"))


def test_auto_picks_cuda_in_bfloat16():
    device = resolve_device("auto")
    assert device.is_cuda and device.gpu_name()
    assert device.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)


@torch.no_grad()
def test_attach_detach_on_cuda_keeps_the_base_bit_for_bit(llama_dir, adapters_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    device = resolve_device("cuda")
    cache = ModelCache(device, max_loaded=1)
    base, _ = cache.get(llama_dir, key="llama", cls=model_class("CAUSAL_LM", None))
    assert base.model.device.type == "cuda" and base.model.dtype == device.dtype
    for i, kind in enumerate(["lora", "dora", "ia3", "modules_to_save", "lora_v2"]):
        attached = checks.attach(base, adapters_dir[kind], name=f"job{i}_a1")
        assert attached.load.dropped == [] and attached.load.missing == [], kind
        assert checks.smoke(base, attached).passed, kind
        reference = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(str(llama_dir), dtype=device.dtype),
            str(adapters_dir[kind])).to(device.torch_device).eval()
        for ids in base.probes:
            assert torch.equal(main_output(attached.model(input_ids=ids)),
                               main_output(reference(input_ids=ids))), kind
        checks.detach(base, attached)
        assert checks.base_unchanged(base) is None, kind


@pytest.mark.parametrize("settings", ["sqlite-local"], indirect=True)
def test_worker_validates_on_cuda_and_survives_out_of_memory(settings, llama_dir,
                                                             adapters_dir, tmp_path):
    from registry.local import LocalRegistry

    backend = LocalRegistry(settings)
    try:
        register_base_dir(backend, name="tiny-llama", directory=llama_dir, settings=settings)
        push(backend, name="bot", directory=adapters_dir["lora"], settings=settings,
             base_model="tiny-llama")
        worker = Worker(backend=backend, settings=settings, device="cuda", once=True,
                        cache_dir=tmp_path / "cache", log=lambda _: None)
        worker.run()
        [job] = backend.list_jobs()
        assert (job.status, job.verdict) == ("succeeded", "validated"), job.error
        result = job.result or {}
        assert result["device"].startswith("cuda") and result["gpu_name"]
        assert result["dtype"] == str(resolve_device("cuda").dtype).removeprefix("torch.")
        assert result["peak_memory_bytes"] > 0

        # A device too small for the base: the job fails with what it needed, the worker goes
        # on to the next job.
        push(backend, name="bot", directory=adapters_dir["lora_v2"], settings=settings,
             base_model="tiny-llama")
        push(backend, name="bot", directory=adapters_dir["dora"], settings=settings,
             base_model="tiny-llama")
        torch.cuda.set_per_process_memory_fraction(1e-7)
        try:
            starved = Worker(backend=backend, settings=settings, device="cuda", once=True,
                             max_cached_bases=0, cache_dir=tmp_path / "cache",
                             log=lambda _: None)
            starved.run()
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0)
        failed = [j for j in backend.list_jobs() if j.version in (2, 3)]
        assert {j.status for j in failed} == {"failed"} and len(starved.jobs) == 2
        assert all("CUDA out of memory" in (j.error or "") for j in failed)
        assert all(j.verdict is None for j in failed)
        assert backend.get_version("bot", 2).status == "registered"
    finally:
        backend.close()
