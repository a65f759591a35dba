"""The worker's base-file cache: keyed by content, least recently used out under a byte cap,
files verified on download, a fetch that died half-way redone."""

from __future__ import annotations

import pytest

from registry.clientside.transfer import register_base_dir
from registry.clientside.worker.files import MARKER, BaseFileCache, base_key, disk_bytes
from tests.peft_factory import save_base, tiny_llama


@pytest.mark.parametrize("settings", ["sqlite-local"], indirect=True)
def test_lru_under_a_byte_cap(http, settings, tmp_path):
    bases = {}
    for seed, name in enumerate(("a", "b", "c")):
        directory = save_base(tiny_llama(seed=seed), tmp_path / f"base-{name}")
        bases[name] = register_base_dir(http, name=name, directory=directory,
                                        settings=settings)[0]
    one = bases["a"].total_size + 4096  # weights plus config
    cache = BaseFileCache(tmp_path / "cache", cap_bytes=2 * one + one // 2)

    first = cache.fetch(http, bases["a"], settings)
    assert not first.hit and first.path.name == base_key(bases["a"])
    assert (first.path / "model.safetensors").read_bytes() == (
        tmp_path / "base-a" / "model.safetensors").read_bytes()
    assert cache.fetch(http, bases["a"], settings).hit
    cache.fetch(http, bases["b"], settings)
    cache.fetch(http, bases["a"], settings)  # a is now the most recently used
    cache.fetch(http, bases["c"], settings)  # over the cap: b goes
    kept = {d.name for _, d in cache.entries()}
    assert kept == {base_key(bases["a"]), base_key(bases["c"])}
    assert cache.used_bytes() <= cache.cap_bytes
    assert not cache.fetch(http, bases["b"], settings).hit

    # A fetch that died before its marker was written is not trusted: fetched again.
    (cache.bases / base_key(bases["c"]) / MARKER).unlink()
    again = cache.fetch(http, bases["c"], settings)
    assert not again.hit and disk_bytes(again.path) > bases["c"].total_size


def test_same_content_same_key():
    from registry.base_models.schemas import BaseFileOut, BaseModelOut

    def out(name: str, digest: str) -> BaseModelOut:
        return BaseModelOut.model_validate({
            "name": name, "revision": "r1", "source": "file:///x", "source_kind": "file",
            "architectures": [], "model_type": "llama", "hidden_size": 1, "vocab_size": 1,
            "num_hidden_layers": 1, "tie_word_embeddings": False, "fingerprint": "f",
            "tensor_count": 1, "total_size": 1, "created_at": "2026-01-01T00:00:00Z",
            "created_by": None,
            "files": [BaseFileOut(path="model.safetensors", size=1, digest=digest)],
            "config": {}})

    same = "sha256:" + "1" * 64
    assert base_key(out("x", same)) == base_key(out("renamed", same))
    assert base_key(out("x", same)) != base_key(out("x", "sha256:" + "2" * 64))
