"""merge_to_dir against peft: merged tensors equal merge_and_unload, logits equal PeftModel.

Real adapters made with peft on tiny random Llama, GPT-2 (Conv1D) and BERT models; sharded
bases and outputs, tied embeddings, output dtypes, refusals and interrupted exports.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftConfig, PeftModel, TaskType, get_peft_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)

from registry.errors import (
    IncompatibleBase,
    InvalidBaseModel,
    InvalidInput,
    OutputExists,
    QuantizedBase,
    Unmergeable,
)
from registry.formats.peft import AdapterConfig, parse_adapter_config
from registry.merge import LocalDirFiles, MergeResult, merge_to_dir
from tests.peft_factory import make_adapter, tiny_bert, tiny_gpt2, tiny_llama

pytestmark = pytest.mark.slow

IDS = torch.tensor([[1, 5, 9, 33, 70, 2, 17, 101], [4, 8, 15, 16, 23, 42, 99, 3]])


def tiny_tied_llama(*, seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config).eval()


BUILDERS: dict[str, Callable[[], PreTrainedModel]] = {
    "llama": tiny_llama,
    "gpt2": tiny_gpt2,
    "bert": tiny_bert,
    "tied": tiny_tied_llama,
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("merge")


@pytest.fixture(scope="module")
def bases(root: Path) -> dict[str, Path]:
    out = {}
    for name, build in BUILDERS.items():
        out[name] = root / f"base-{name}"
        build().save_pretrained(out[name])
    # Several shards, so deltas land in different base files.
    out["llama-sharded"] = root / "base-llama-sharded"
    tiny_llama().save_pretrained(out["llama-sharded"], max_shard_size="20KB")
    out["llama-fp16"] = root / "base-llama-fp16"
    tiny_llama().half().save_pretrained(out["llama-fp16"])
    return out


def custom_adapter(path: Path, base: str, config: PeftConfig) -> Path:
    """Like peft_factory.make_adapter, for configs it does not offer."""
    model = get_peft_model(BUILDERS[base](), config)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=gen))
    model.save_pretrained(str(path))
    return path


CUSTOM: dict[str, tuple[str, PeftConfig]] = {
    "rslora": ("llama", LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=8,
                                   target_modules=["q_proj", "v_proj", "down_proj"],
                                   use_rslora=True)),
    "lora_bias": ("bert", LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8,
                                     target_modules=["query", "value"], lora_bias=True)),
    "gpt2_dora": ("gpt2", LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=8,
                                     target_modules=["c_attn", "c_fc"], fan_in_fan_out=True,
                                     use_dora=True)),
    "tied_head": ("tied", LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=8,
                                     target_modules=["q_proj"], modules_to_save=["lm_head"])),
    "tied_embedding": ("tied", LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=8,
                                          target_modules=["q_proj", "embed_tokens"])),
}
FACTORY: dict[str, str] = {
    "lora": "llama",
    "lora_rank_pattern": "llama",
    "dora": "llama",
    "ia3": "llama",
    "loha": "llama",
    "lokr": "llama",
    "modules_to_save": "llama",
    "embedding": "llama",
    "gpt2_lora": "gpt2",
    "bert_lora": "bert",
}


@pytest.fixture(scope="module")
def adapters(root: Path) -> dict[str, Path]:
    out = {}
    for kind in FACTORY:
        out[kind] = make_adapter(root / f"adapter-{kind}", kind)
    for kind, (base, config) in CUSTOM.items():
        out[kind] = custom_adapter(root / f"adapter-{kind}", base, config)
    out["prompt_tuning"] = make_adapter(root / "adapter-prompt_tuning", "prompt_tuning")
    return out


def config_of(adapter: Path) -> AdapterConfig:
    return parse_adapter_config((adapter / "adapter_config.json").read_bytes())


def export(base: Path, adapter: Path, out: Path, **kwargs: Any) -> MergeResult:
    return merge_to_dir(
        base=LocalDirFiles(base),
        adapter_config=config_of(adapter),
        adapter_weights=adapter / "adapter_model.safetensors",
        out_dir=out,
        **kwargs,
    )


def load_dir(directory: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(directory.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


def auto_class(base: str) -> Any:
    return AutoModelForSequenceClassification if base == "bert" else AutoModelForCausalLM


def logits(model: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def assert_matches_peft(base: str, adapter: Path, out: Path, *, atol: float = 1e-5) -> None:
    """Every merged tensor equals merge_and_unload's; logits equal the unmerged PeftModel's."""
    ours = load_dir(out)
    ref = PeftModel.from_pretrained(BUILDERS[base](), adapter).merge_and_unload().state_dict()
    config = json.loads((out / "config.json").read_text())
    compared = 0
    for name, expected in ref.items():
        if name not in ours:
            # Only a tied output head may be left out, exactly when the ties still hold.
            assert name == "lm_head.weight" and config.get("tie_word_embeddings", True), name
            continue
        got = ours[name].float()
        assert got.shape == expected.shape, name
        diff = (got - expected.float()).abs().max().item()
        assert diff <= atol, f"{name}: max abs diff {diff}"
        compared += 1
    assert compared == len(ours)
    peft_model = PeftModel.from_pretrained(BUILDERS[base](), adapter).eval()
    merged = auto_class(base).from_pretrained(out).eval()
    diff = (logits(merged) - logits(peft_model)).abs().max().item()
    assert diff <= 1e-4, f"logits differ by {diff}"


def changed_tensors(base_dir: Path, out: Path) -> set[str]:
    before, after = load_dir(base_dir), load_dir(out)
    return {n for n in after if n not in before or not torch.equal(after[n], before[n])}


# --- correctness ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [*FACTORY, "rslora", "lora_bias", "gpt2_dora"])
def test_merge_equals_peft(kind: str, bases: dict[str, Path], adapters: dict[str, Path],
                           root: Path) -> None:
    base = FACTORY.get(kind) or CUSTOM[kind][0]
    out = root / f"out-{kind}"
    result = export(bases[base], adapters[kind], out)
    assert_matches_peft(base, adapters[kind], out)
    assert result.shards == 1 and result.dtype == "float32"
    changed = changed_tensors(bases[base], out)
    assert changed and result.merged_modules >= 1
    if kind == "lora_bias":
        assert any(n.endswith("query.bias") for n in changed)
    if kind == "ia3":
        assert any("down_proj" in n for n in changed)
    if kind == "gpt2_lora":
        # GPT-2 ties lm_head to wte and the adapter touches neither: the ties stay.
        assert (out / "config.json").read_bytes() == (bases["gpt2"] / "config.json").read_bytes()
        assert "lm_head.weight" not in load_dir(out)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["lora", "dora", "ia3", "loha", "lokr", "gpt2_dora", "embedding"])
def test_merge_on_cuda_equals_peft(kind: str, bases: dict[str, Path], adapters: dict[str, Path],
                                   root: Path) -> None:
    base = FACTORY.get(kind) or CUSTOM[kind][0]
    out = root / f"out-cuda-{kind}"
    export(bases[base], adapters[kind], out, device="cuda")
    assert_matches_peft(base, adapters[kind], out)


def test_sharded_base_and_sharded_output(bases: dict[str, Path], adapters: dict[str, Path],
                                         root: Path) -> None:
    base_dir = bases["llama-sharded"]
    base_shards = json.loads((base_dir / "model.safetensors.index.json").read_text())
    assert len(set(base_shards["weight_map"].values())) > 2
    out = root / "out-sharded"
    limit = 30_000
    result = export(base_dir, adapters["lora"], out, max_shard_bytes=limit)
    assert result.shards > 2
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*.safetensors"))
    assert [p.name for p in shards] == [
        f"model-{i:05d}-of-{result.shards:05d}.safetensors" for i in range(1, result.shards + 1)
    ]
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    total = 0
    for shard in shards:
        with safe_open(shard, "pt") as f:
            names = list(f.keys())
            sizes = [f.get_tensor(n).numel() * 4 for n in names]
        assert all(index["weight_map"][n] == shard.name for n in names)
        assert sum(sizes) <= limit or len(names) == 1
        total += sum(sizes)
    assert index["metadata"]["total_size"] == total
    assert set(index["weight_map"]) == set(load_dir(bases["llama"]))
    # The same adapter merged into the single-file base gives the same tensors.
    assert_matches_peft("llama", adapters["lora"], out)
    single = root / "out-sharded-single"
    export(base_dir, adapters["lora"], single)
    assert [p.name for p in single.glob("*.safetensors")] == ["model.safetensors"]
    assert not (single / "model.safetensors.index.json").exists()
    merged = load_dir(out)
    for name, tensor in load_dir(single).items():
        assert torch.equal(tensor, merged[name])


@pytest.mark.parametrize("kind", ["tied_head", "tied_embedding"])
def test_diverging_tied_embeddings_are_untied(kind: str, bases: dict[str, Path],
                                              adapters: dict[str, Path], root: Path) -> None:
    base_names = set(load_dir(bases["tied"]))
    assert "lm_head.weight" not in base_names  # the tied head is not saved
    out = root / f"out-{kind}"
    export(bases["tied"], adapters[kind], out)
    merged = load_dir(out)
    assert set(merged) == base_names | {"lm_head.weight"}
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    assert not torch.equal(merged["lm_head.weight"], merged["model.embed_tokens.weight"])
    peft_model = PeftModel.from_pretrained(tiny_tied_llama(), adapters[kind]).eval()
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    diff = (logits(loaded) - logits(peft_model)).abs().max().item()
    assert diff <= 1e-4


def test_bfloat16_output(bases: dict[str, Path], adapters: dict[str, Path], root: Path) -> None:
    out = root / "out-bf16"
    result = export(bases["llama"], adapters["dora"], out, dtype="bfloat16")
    assert result.dtype == "bfloat16"
    with safe_open(out / "model.safetensors", "pt") as f:
        names = list(f.keys())
        assert {f.get_slice(n).get_dtype() for n in names} == {"BF16"}
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    ref = PeftModel.from_pretrained(tiny_llama(), adapters["dora"]).merge_and_unload().state_dict()
    ours = load_dir(out)
    for name, expected in ref.items():
        # Cast once from float32: the float32 merge rounded to bfloat16 (within one bf16 ulp, as
        # float32 rounding may differ in the last bit).
        torch.testing.assert_close(ours[name], expected.to(torch.bfloat16), atol=1e-6,
                                   rtol=2**-7)


def test_half_base_keeps_its_dtype(bases: dict[str, Path], adapters: dict[str, Path],
                                   root: Path) -> None:
    out = root / "out-fp16"
    result = export(bases["llama-fp16"], adapters["lora"], out)
    assert result.dtype == "float16"
    ours = load_dir(out)
    assert {t.dtype for t in ours.values()} == {torch.float16}
    base32 = tiny_llama().half().float()
    ref = PeftModel.from_pretrained(base32, adapters["lora"]).merge_and_unload().state_dict()
    for name, expected in ref.items():
        torch.testing.assert_close(ours[name], expected.half(), atol=1e-6, rtol=2**-10)
    assert (out / "config.json").read_bytes() == (bases["llama-fp16"] / "config.json").read_bytes()


class DownloadingFiles:
    """A BaseFiles like a remote store's: each file is a temporary download, deleted after use."""

    def __init__(self, root: Path, scratch: Path) -> None:
        self.root, self.scratch = root, scratch
        self.live = 0
        self.most_live = 0
        self.fetched: list[str] = []

    def list_files(self) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*")
                      if p.is_file())

    @contextlib.contextmanager
    def local_path(self, path: str) -> Iterator[Path]:
        local = self.scratch / f"{len(self.fetched)}-{path.replace('/', '_')}"
        shutil.copyfile(self.root / path, local)
        self.fetched.append(path)
        self.live += 1
        self.most_live = max(self.most_live, self.live)
        try:
            yield local
        finally:
            self.live -= 1
            local.unlink()


def test_remote_like_base_materialises_one_file_at_a_time(
    bases: dict[str, Path], adapters: dict[str, Path], root: Path
) -> None:
    scratch = root / "downloads"
    scratch.mkdir()
    files = DownloadingFiles(bases["llama-sharded"], scratch)
    out = root / "out-remote"
    merge_to_dir(base=files, adapter_config=config_of(adapters["lora"]),
                 adapter_weights=adapters["lora"] / "adapter_model.safetensors", out_dir=out)
    assert files.most_live == 1
    assert not list(scratch.iterdir())
    shards = [f for f in files.list_files() if f.endswith(".safetensors")]
    # Without range reads, each shard is fetched once for its header and once for its data.
    assert sorted(f for f in files.fetched if f.endswith(".safetensors")) == sorted(shards * 2)
    assert_matches_peft("llama", adapters["lora"], out)


def test_misaligned_base_tensors(bases: dict[str, Path], adapters: dict[str, Path],
                                 root: Path) -> None:
    # Writers other than the safetensors library may put a 3-byte BOOL tensor first, leaving every
    # float tensor after it off its alignment; those are copied instead of viewed in place.
    tensors = load_file(bases["llama"] / "model.safetensors")
    header: dict[str, Any] = {"__metadata__": {"format": "pt"},
                              "aa.flag": {"dtype": "BOOL", "shape": [3], "data_offsets": [0, 3]}}
    blobs, offset = [b"\x01\x00\x01"], 3
    for name in sorted(tensors):
        data = tensors[name].numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    base_dir = root / "base-misaligned"
    base_dir.mkdir()
    shutil.copy(bases["llama"] / "config.json", base_dir / "config.json")
    (base_dir / "model.safetensors").write_bytes(
        len(raw).to_bytes(8, "little") + raw + b"".join(blobs)
    )
    out = root / "out-misaligned"
    export(base_dir, adapters["lora"], out)
    with safe_open(out / "model.safetensors", "pt") as f:
        merged = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    assert merged.pop("aa.flag").tolist() == [True, False, True]
    ref = PeftModel.from_pretrained(tiny_llama(), adapters["lora"]).merge_and_unload().state_dict()
    assert set(merged) == set(ref)
    for name, expected in ref.items():
        assert (merged[name] - expected).abs().max().item() <= 1e-5, name


# --- files --------------------------------------------------------------------------------------


def test_other_files_are_copied_and_hashed(bases: dict[str, Path], adapters: dict[str, Path],
                                           root: Path) -> None:
    base_dir = root / "base-with-files"
    shutil.copytree(bases["llama-sharded"], base_dir)
    (base_dir / "tokenizer.json").write_text('{"version": "1.0"}')
    (base_dir / "tokenizer_config.json").write_text("{}")
    (base_dir / "special_tokens_map.json").write_text("{}")
    (base_dir / "extra").mkdir()
    (base_dir / "extra" / "notes.txt").write_text("kept")
    (base_dir / "pytorch_model.bin").write_bytes(b"stale pickle weights")
    (base_dir / "original").mkdir()
    (base_dir / "original" / "consolidated.00.pth").write_bytes(b"more pickle")
    out = root / "out-files"
    result = export(base_dir, adapters["lora"], out, max_shard_bytes=60_000)
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert [f.path for f in result.files] == on_disk
    for f in result.files:
        data = (out / f.path).read_bytes()
        assert f.digest == f"sha256:{hashlib.sha256(data).hexdigest()}"
        assert f.size == len(data)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "generation_config.json", "config.json", "extra/notes.txt"):
        assert (out / name).read_bytes() == (base_dir / name).read_bytes(), name
    assert not (out / "pytorch_model.bin").exists()
    assert not (out / "original").exists()
    assert len(list(out.glob("model-*.safetensors"))) == result.shards > 1


# --- refusals -----------------------------------------------------------------------------------


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*"))


def test_prompt_tuning_is_refused(bases: dict[str, Path], adapters: dict[str, Path],
                                  root: Path) -> None:
    out = root / "out-refused-prompt"
    with pytest.raises(Unmergeable, match="PROMPT_TUNING"):
        export(bases["llama"], adapters["prompt_tuning"], out)
    assert_nothing_written(out)


def test_quantized_base_config_is_refused(bases: dict[str, Path], adapters: dict[str, Path],
                                          root: Path) -> None:
    base_dir = root / "base-quantized-config"
    shutil.copytree(bases["llama"], base_dir)
    config = json.loads((base_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (base_dir / "config.json").write_text(json.dumps(config))
    out = root / "out-refused-quantized"
    with pytest.raises(QuantizedBase, match="bitsandbytes"):
        export(base_dir, adapters["lora"], out)
    assert_nothing_written(out)


def test_quantized_target_weights_are_refused(bases: dict[str, Path], adapters: dict[str, Path],
                                              root: Path) -> None:
    base_dir = root / "base-int8"
    base_dir.mkdir()
    shutil.copy(bases["llama"] / "config.json", base_dir / "config.json")
    tensors = load_file(bases["llama"] / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    tensors[name] = (tensors[name] * 100).to(torch.int8)
    save_file(tensors, base_dir / "model.safetensors")
    out = root / "out-refused-int8"
    with pytest.raises(QuantizedBase, match=r"q_proj.*I8"):
        export(base_dir, adapters["lora"], out)
    assert_nothing_written(out)


def test_incompatible_base_is_refused(bases: dict[str, Path], adapters: dict[str, Path],
                                      root: Path) -> None:
    out = root / "out-refused-missing"
    with pytest.raises(IncompatibleBase, match=r"model\.layers\.0\.self_attn\.q_proj"):
        export(bases["bert"], adapters["lora"], out)
    assert_nothing_written(out)
    wide = root / "base-llama-wide"
    tiny_llama(hidden=48).save_pretrained(wide)
    with pytest.raises(IncompatibleBase, match=r"\[32, 32\].*\[48, 48\]"):
        export(wide, adapters["lora"], out)
    assert_nothing_written(out)


def test_pickle_only_base_is_refused(adapters: dict[str, Path], bases: dict[str, Path],
                                     root: Path) -> None:
    base_dir = root / "base-pickle"
    base_dir.mkdir()
    shutil.copy(bases["llama"] / "config.json", base_dir / "config.json")
    (base_dir / "pytorch_model.bin").write_bytes(b"not really a pickle")
    out = root / "out-refused-pickle"
    with pytest.raises(InvalidBaseModel, match="pickle"):
        export(base_dir, adapters["lora"], out)
    assert_nothing_written(out)


def test_bad_arguments_are_refused(bases: dict[str, Path], adapters: dict[str, Path],
                                   root: Path) -> None:
    out = root / "out-refused-args"
    with pytest.raises(InvalidInput, match="dtype"):
        export(bases["llama"], adapters["lora"], out, dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidInput, match="cuda"):
            export(bases["llama"], adapters["lora"], out, device="cuda")
    with pytest.raises(InvalidInput, match="device"):
        export(bases["llama"], adapters["lora"], out, device="tpu")
    assert_nothing_written(out)


def test_non_empty_out_dir_needs_force(bases: dict[str, Path], adapters: dict[str, Path],
                                       root: Path) -> None:
    out = root / "out-existing"
    out.mkdir()
    (out / "old.txt").write_text("previous export")
    with pytest.raises(OutputExists, match="force"):
        export(bases["llama"], adapters["lora"], out)
    assert (out / "old.txt").exists()
    export(bases["llama"], adapters["lora"], out, force=True)
    assert not (out / "old.txt").exists()
    assert (out / "model.safetensors").exists()
    assert not list(root.glob(".out-existing.*"))
    empty = root / "out-empty"
    empty.mkdir()
    export(bases["llama"], adapters["lora"], empty)
    assert (empty / "model.safetensors").exists()


def test_interrupted_export_leaves_nothing(bases: dict[str, Path], adapters: dict[str, Path],
                                           root: Path) -> None:
    out = root / "out-interrupted"
    calls: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        calls.append((done, total))
        if done > total // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export(bases["llama-sharded"], adapters["lora"], out, max_shard_bytes=30_000,
               progress=progress)
    assert calls and calls[-1][0] < calls[-1][1]
    assert_nothing_written(out)
    # A later export of the same directory works, and its progress ends at the total.
    calls.clear()
    export(bases["llama-sharded"], adapters["lora"], out, progress=lambda d, t: calls.append(
        (d, t)))
    assert calls[-1][0] == calls[-1][1]
