"""Ground truth for the static compatibility verdict: it must equal what peft does on load.

Each case saves a tiny base with save_pretrained (safetensors) and builds an adapter with peft,
then compares two answers:
- static: registry.compat.check_compatibility on the base's config.json + safetensors header and
  the adapter's config + header (no tensor bytes read);
- truth: `PeftModel.from_pretrained(<task class>.from_pretrained(base), adapter)` succeeds with no
  missing and no unexpected adapter keys. from_pretrained only warns about missing keys and
  never reports unexpected ones, so the load result is taken from `load_adapter`'s return value
  (set_peft_model_state_dict's result, missing keys already narrowed by peft to this adapter's).
  Prompt learning loads its top-level tensors into the prompt encoder outside that result, and
  PEFT sizes the encoder from the adapter's own config, so for it the truth also runs one
  forward pass.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from peft import (
    IA3Config,
    LoraConfig,
    PeftConfig,
    PeftModel,
    TaskType,
    get_peft_model,
)
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertModel,
    LlamaModel,
    PhiConfig,
    PhiForCausalLM,
    PreTrainedModel,
)

from registry.compat import BaseManifest, Finding, Verdict, base_manifest, check_compatibility
from registry.formats import (
    Limits,
    LocalDirAccess,
    TensorInfo,
    inspect_adapter,
    list_local_files,
    parse_adapter_config,
    parse_header,
)
from tests.peft_factory import (
    ADAPTER_KINDS,
    HIDDEN,
    VOCAB,
    make_adapter,
    save_base,
    tiny_bert,
    tiny_gpt2,
    tiny_llama,
)

pytestmark = pytest.mark.slow

LIMITS = Limits(
    max_file_bytes=1 << 30, max_files=100, max_config_bytes=1 << 20, max_header_bytes=1 << 24
)
RESIZED_VOCAB = VOCAB + 8
PROMPT_TENSORS = {"prompt_embeddings", "prefix_task_cols", "prefix_task_rows"}
_TASK_CLASSES: dict[str | None, Any] = {
    "CAUSAL_LM": AutoModelForCausalLM,
    "SEQ_CLS": AutoModelForSequenceClassification,
}


# --- building pairs ------------------------------------------------------------------------------


def _tiny_phi() -> PhiForCausalLM:
    # Phi has Llama's attention paths (model.layers.N.self_attn.q_proj) but an fc1/fc2 MLP, so
    # a Llama adapter on gate_proj targets a module this base lacks.
    config = PhiConfig(
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=128,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return PhiForCausalLM(config).eval()


def _resized_llama() -> PreTrainedModel:
    model = tiny_llama()
    model.resize_token_embeddings(RESIZED_VOCAB, mean_resizing=False)
    return model


def _save_adapter(model: PreTrainedModel, config: Any, path: Path) -> Path:
    peft_model = get_peft_model(model, config)
    # Non-zero adapter weights, as in tests.peft_factory, so nothing loads vacuously.
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, param in sorted(peft_model.named_parameters()):
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=gen))
    peft_model.save_pretrained(path, safe_serialization=True)
    return path


def _drop_rank_pattern(path: Path) -> Path:
    make_adapter(path, "lora_rank_pattern")
    config_path = path / "adapter_config.json"
    saved = json.loads(config_path.read_text())
    saved["rank_pattern"] = {}
    config_path.write_text(json.dumps(saved))
    return path


_CAUSAL = TaskType.CAUSAL_LM
_ATTN = ["q_proj", "v_proj"]

BASES: dict[str, Callable[[], PreTrainedModel]] = {
    "llama": tiny_llama,
    "llama_h48": lambda: tiny_llama(hidden=48),
    "llama_4_layers": lambda: tiny_llama(layers=4),
    "llama_bare": lambda: LlamaModel(tiny_llama().config),
    "phi": _tiny_phi,
    "gpt2": tiny_gpt2,
    "gpt2_h48": lambda: tiny_gpt2(hidden=48),
    "bert": tiny_bert,
    "bert_bare": lambda: BertModel(tiny_bert().config),
}

ADAPTERS: dict[str, Callable[[Path], Path]] = {
    **{
        kind: (lambda k: lambda p: make_adapter(p, k))(kind) for kind in ADAPTER_KINDS
    },
    "lora_rank_pattern_dropped": _drop_rank_pattern,
    "lora_gate_proj": lambda p: _save_adapter(
        tiny_llama(), LoraConfig(task_type=_CAUSAL, r=4, target_modules=[*_ATTN, "gate_proj"]), p
    ),
    "lora_4_layers": lambda p: _save_adapter(
        tiny_llama(layers=4), LoraConfig(task_type=_CAUSAL, r=4, target_modules=_ATTN), p
    ),
    "lora_layers_0_1": lambda p: _save_adapter(
        tiny_llama(),
        LoraConfig(
            task_type=_CAUSAL,
            r=4,
            target_modules=_ATTN,
            layers_to_transform=[0, 1],
            layers_pattern="layers",
        ),
        p,
    ),
    "ia3_4_layers": lambda p: _save_adapter(
        tiny_llama(layers=4),
        IA3Config(
            task_type=_CAUSAL,
            target_modules=["k_proj", "down_proj"],
            feedforward_modules=["down_proj"],
        ),
        p,
    ),
    "resized_vocab": lambda p: _save_adapter(
        _resized_llama(),
        LoraConfig(
            task_type=_CAUSAL,
            r=4,
            target_modules=_ATTN,
            modules_to_save=["lm_head", "embed_tokens"],
        ),
        p,
    ),
    "gpt2_lm_head": lambda p: _save_adapter(
        tiny_gpt2(),
        LoraConfig(
            task_type=_CAUSAL,
            r=4,
            target_modules=["c_attn"],
            fan_in_fan_out=True,
            modules_to_save=["lm_head"],
        ),
        p,
    ),
}


class Pairs:
    """Builds each base and adapter once per module, on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._built: dict[str, Path] = {}

    def base(self, name: str) -> Path:
        key = f"base/{name}"
        if key not in self._built:
            self._built[key] = save_base(BASES[name](), self.root / key)
        return self._built[key]

    def adapter(self, name: str) -> Path:
        key = f"adapter/{name}"
        if key not in self._built:
            path = self.root / key
            shutil.rmtree(path, ignore_errors=True)
            self._built[key] = ADAPTERS[name](path)
        return self._built[key]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Pairs:
    return Pairs(tmp_path_factory.mktemp("compat"))


# --- the two answers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Truth:
    """What peft did: loaded cleanly or not, and why not."""

    compatible: bool
    error: str | None = None
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def peft_truth(base_dir: Path, adapter_dir: Path) -> Truth:
    """Load the adapter onto the base with peft, as a user would, and report the outcome."""
    config = PeftConfig.from_pretrained(str(adapter_dir))
    task_class = _TASK_CLASSES.get(config.task_type, AutoModel)
    base = task_class.from_pretrained(str(base_dir))
    results: list[Any] = []
    original = PeftModel.load_adapter

    def spy(self: PeftModel, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        results.append(result)
        return result

    try:
        with mock.patch.object(PeftModel, "load_adapter", spy):
            model = PeftModel.from_pretrained(base, str(adapter_dir))
    except Exception as exc:  # a failure to load is the answer; each case says which one
        return Truth(False, error=f"{type(exc).__name__}: {exc}")
    (result,) = results
    missing = list(result.missing_keys)
    unexpected = [k for k in result.unexpected_keys if k not in PROMPT_TENSORS]
    if config.is_prompt_learning:
        try:
            with torch.no_grad():
                model(input_ids=torch.tensor([[1, 2, 3]]))
        except Exception as exc:
            return Truth(False, error=f"forward: {type(exc).__name__}: {exc}")
    return Truth(not missing and not unexpected, missing=missing, unexpected=unexpected)


def _header(path: Path) -> dict[str, TensorInfo]:
    with path.open("rb") as f:

        def read_at(offset: int, length: int) -> bytes:
            f.seek(offset)
            return f.read(length)

        return parse_header(
            read_at,
            file_size=path.stat().st_size,
            max_header_bytes=LIMITS.max_header_bytes,
            name=path.name,
        )


def read_base(base_dir: Path) -> BaseManifest:
    tensors: dict[str, TensorInfo] = {}
    for path in sorted(base_dir.glob("*.safetensors")):
        tensors.update(_header(path))
    return base_manifest(json.loads((base_dir / "config.json").read_text()), tensors)


def static_verdict(base_dir: Path, adapter_dir: Path, *, validate: bool = True) -> Verdict:
    """The registry's verdict from the two manifests; `validate` runs the upload checks first."""
    if validate:
        inspection = inspect_adapter(
            list_local_files(adapter_dir), LocalDirAccess(adapter_dir), limits=LIMITS
        )
        config, tensors = inspection.config, inspection.tensors
    else:
        config = parse_adapter_config((adapter_dir / "adapter_config.json").read_bytes())
        tensors = _header(adapter_dir / "adapter_model.safetensors")
    return check_compatibility(config, tensors, read_base(base_dir), base_name=base_dir.name)


# --- cases ---------------------------------------------------------------------------------------


def _only(verdict: Verdict, code: str) -> list[Finding]:
    return [f for f in verdict.reasons if f.code == code]


def _hidden_size(v: Verdict) -> None:
    q_a = [
        f
        for f in _only(v, "shape_mismatch")
        if f.module == "model.layers.0.self_attn.q_proj" and str(f.tensor).endswith("lora_A.weight")
    ]
    assert [(f.expected, f.found) for f in q_a] == [([4, 48], [4, HIDDEN])]
    assert len(_only(v, "shape_mismatch")) == 8  # lora_A and lora_B of q/v in 2 layers


def _missing_gate_proj(v: Verdict) -> None:
    assert {f.module for f in v.reasons} == {
        "model.layers.0.mlp.gate_proj",
        "model.layers.1.mlp.gate_proj",
    }


def _llama_on_gpt2(v: Verdict) -> None:
    assert len(_only(v, "missing_module")) == 4
    assert v.checked_modules == 0


def _conv1d_h48(v: Verdict) -> None:
    # Conv1D c_attn weight is [in 48, out 144]: lora_A [r, in], lora_B [out, r].
    pairs = {
        (str(f.tensor).rsplit(".", 2)[-2], tuple(f.expected), tuple(f.found))
        for f in v.reasons
        if f.module == "transformer.h.0.attn.c_attn"
    }
    assert pairs == {("lora_A", (4, 48), (4, 32)), ("lora_B", (144, 4), (96, 4))}


def _bert_bare(v: Verdict) -> None:
    new = [f for f in v.warnings if f.code == "new_module"]
    assert [f.module for f in new] == ["classifier"]
    assert v.checked_modules == 4


def _dora_h48(v: Verdict) -> None:
    magnitude = [f for f in v.reasons if str(f.tensor).endswith("lora_magnitude_vector")]
    assert {(f.module, tuple(f.found), tuple(f.expected)) for f in magnitude} >= {
        ("model.layers.0.self_attn.q_proj", (32,), (48,)),
        ("model.layers.0.self_attn.v_proj", (16,), (24,)),
    }


def _ia3_h48(v: Verdict) -> None:
    by_module = {f.module: (f.expected, f.found) for f in v.reasons}
    assert by_module["model.layers.0.mlp.down_proj"] == ([1, 96], [1, 64])  # feedforward [1, in]
    assert by_module["model.layers.0.self_attn.k_proj"] == ([24, 1], [16, 1])  # [out, 1]


def _lokr_h48(v: Verdict) -> None:
    assert all("kron(lokr_w1, lokr_w2)" in f.message for f in v.reasons)


def _rank_pattern_dropped(v: Verdict) -> None:
    found = {(f.module, f.expected, f.found) for f in v.reasons}
    assert ("model.layers.0.self_attn.o_proj", 4, 2) in found
    assert ("model.layers.1.self_attn.q_proj", 4, 8) in found
    assert len(found) == 3  # o_proj in both layers, q_proj in layer 1


def _resized_vocab(v: Verdict) -> None:
    assert {(f.module, f.expected, f.found) for f in v.reasons} == {
        ("lm_head", VOCAB, RESIZED_VOCAB),
        ("model.embed_tokens", VOCAB, RESIZED_VOCAB),
    }


def _adapter_deeper(v: Verdict) -> None:
    (layers,) = _only(v, "layer_count")
    assert (layers.expected, layers.found) == (2, 4)
    assert {f.module for f in _only(v, "missing_module")} == {
        f"model.layers.{i}.self_attn.{m}" for i in (2, 3) for m in ("q_proj", "v_proj")
    }


def _base_deeper(v: Verdict) -> None:
    (layers,) = _only(v, "layer_count")
    assert (layers.expected, layers.found) == (4, 2)
    assert {f.module for f in _only(v, "missing_adapter_weights")} == {
        f"model.layers.{i}.self_attn.{m}" for i in (2, 3) for m in ("q_proj", "v_proj")
    }


def _prompt_h48(v: Verdict) -> None:
    (finding,) = v.reasons
    assert (finding.tensor, finding.expected, finding.found) == (
        "prompt_embeddings",
        [4, 48],
        [4, 32],
    )


@dataclass(frozen=True)
class Case:
    """A base/adapter pair, peft's expected outcome, and the verdict's expected findings."""

    id: str
    base: str
    adapter: str
    compatible: bool
    reasons: frozenset[str] = frozenset()  # exactly these reason codes
    warnings: frozenset[str] = frozenset()  # at least these warning codes
    details: Callable[[Verdict], None] | None = None
    validate: bool = True
    # How peft fails to load the pair (a regex over "ExceptionType: message"); None: it loads
    # without raising, and missing or unexpected keys decide.
    peft_error: str | None = None


def _size_mismatch(param: str) -> str:
    """peft's load error for a parameter (a regex) whose shape differs from the model's."""
    return r"RuntimeError: Error\(s\) in loading state_dict.*size mismatch for " + param


def _case(
    id: str,
    base: str,
    adapter: str,
    compatible: bool,
    reasons: tuple[str, ...] = (),
    warnings: tuple[str, ...] = (),
    **kw: Any,
) -> Case:
    return Case(id, base, adapter, compatible, frozenset(reasons), frozenset(warnings), **kw)


CASES = [
    # the pairs the issue names
    _case("llama_match", "llama", "lora", True),
    _case(
        "hidden_size_differs",
        "llama_h48",
        "lora",
        False,
        ("shape_mismatch",),
        details=_hidden_size,
        peft_error=_size_mismatch(r"\S*\.layers\.0\.self_attn\.q_proj\.lora_A\."),
    ),
    _case(
        "target_module_missing",
        "phi",
        "lora_gate_proj",
        False,
        ("missing_module",),
        details=_missing_gate_proj,
    ),
    _case("gpt2_conv1d_match", "gpt2", "gpt2_lora", True),
    _case(
        "gpt2_conv1d_hidden_differs",
        "gpt2_h48",
        "gpt2_lora",
        False,
        ("shape_mismatch",),
        details=_conv1d_h48,
        peft_error=_size_mismatch(r"\S*\.c_attn\.lora_A\."),
    ),
    _case("bert_match", "bert", "bert_lora", True),
    _case(
        "bert_bare_backbone",
        "bert_bare",
        "bert_lora",
        True,
        warnings=("new_module", "namespace_mapped"),
        details=_bert_bare,
    ),
    _case("dora_match", "llama", "dora", True),
    _case(
        "dora_hidden_differs",
        "llama_h48",
        "dora",
        False,
        ("shape_mismatch",),
        details=_dora_h48,
        peft_error=_size_mismatch(r"\S*\.q_proj\.lora_A\."),
    ),
    _case("ia3_match", "llama", "ia3", True),
    _case(
        "ia3_hidden_differs",
        "llama_h48",
        "ia3",
        False,
        ("shape_mismatch",),
        details=_ia3_h48,
        peft_error=_size_mismatch(r"\S*\.ia3_l\."),
    ),
    _case("rank_pattern_match", "llama", "lora_rank_pattern", True),
    _case(
        "rank_pattern_hidden_differs",
        "llama_h48",
        "lora_rank_pattern",
        False,
        ("shape_mismatch",),
        peft_error=_size_mismatch(r"\S*\.lora_A\."),
    ),
    _case(
        "rank_pattern_not_in_config",
        "llama",
        "lora_rank_pattern_dropped",
        False,
        ("rank_mismatch",),
        details=_rank_pattern_dropped,
        validate=False,
        peft_error=_size_mismatch(r"\S*\.o_proj\.lora_A\."),
    ),
    _case("modules_to_save_match", "llama", "modules_to_save", True),
    _case(
        "modules_to_save_resized_vocab",
        "llama",
        "resized_vocab",
        False,
        ("vocab_resized",),
        details=_resized_vocab,
        peft_error=_size_mismatch(r"\S*\.embed_tokens\.modules_to_save\."),
    ),
    _case(
        "adapter_has_more_layers",
        "llama",
        "lora_4_layers",
        False,
        ("layer_count", "missing_module"),
        details=_adapter_deeper,
    ),
    _case(
        "base_has_more_layers",
        "llama_4_layers",
        "lora",
        False,
        ("layer_count", "missing_adapter_weights"),
        details=_base_deeper,
    ),
    # further methods and layouts
    _case(
        "llama_adapter_on_gpt2",
        "gpt2",
        "lora",
        False,
        ("missing_module",),
        details=_llama_on_gpt2,
        peft_error=r"NoMatchingPeftModuleError: Target modules .* not found in the base model",
    ),
    _case(
        "ia3_adapter_has_more_layers",
        "llama",
        "ia3_4_layers",
        False,
        ("layer_count", "missing_module"),
    ),
    _case("layers_to_transform_on_deeper_base", "llama_4_layers", "lora_layers_0_1", True),
    _case("loha_match", "llama", "loha", True),
    _case(
        "loha_hidden_differs",
        "llama_h48",
        "loha",
        False,
        ("shape_mismatch",),
        peft_error=_size_mismatch(r"\S*\.hada_w1_a\."),
    ),
    _case("lokr_match", "llama", "lokr", True),
    _case(
        "lokr_hidden_differs",
        "llama_h48",
        "lokr",
        False,
        ("shape_mismatch",),
        details=_lokr_h48,
        peft_error=_size_mismatch(r"\S*\.lokr_w1\."),
    ),
    _case("embedding_lora_match", "llama", "embedding", True),
    _case(
        "embedding_lora_hidden_differs",
        "llama_h48",
        "embedding",
        False,
        ("shape_mismatch",),
        peft_error=_size_mismatch(r"\S*\.embed_tokens\."),
    ),
    _case(
        "bare_backbone_base", "llama_bare", "modules_to_save", True, warnings=("namespace_mapped",)
    ),
    _case("gpt2_tied_lm_head_saved", "gpt2", "gpt2_lm_head", True),
    _case("prompt_tuning_match", "llama", "prompt_tuning", True),
    _case(
        "prompt_tuning_hidden_differs",
        "llama_h48",
        "prompt_tuning",
        False,
        ("shape_mismatch",),
        details=_prompt_h48,
        peft_error=r"forward: RuntimeError: Sizes of tensors must match",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_static_verdict_equals_peft_load(pairs: Pairs, case: Case) -> None:
    base_dir, adapter_dir = pairs.base(case.base), pairs.adapter(case.adapter)
    truth = peft_truth(base_dir, adapter_dir)
    assert truth.compatible == case.compatible, f"the pair does not behave as built: {truth}"
    # peft failed the way this pair is built to fail, not some other way (a broken fixture, a
    # missing dependency) that would pass for "incompatible" just as well.
    if case.peft_error is None:
        assert truth.error is None, truth
    else:
        assert truth.error is not None and re.search(case.peft_error, truth.error, re.S), truth

    verdict = static_verdict(base_dir, adapter_dir, validate=case.validate)
    assert verdict.compatible == truth.compatible, (truth, verdict.to_json())
    assert {f.code for f in verdict.reasons} == case.reasons, verdict.to_json()
    assert case.warnings <= {f.code for f in verdict.warnings}, verdict.to_json()
    json.dumps(verdict.to_json())
    if case.details is not None:
        case.details(verdict)
