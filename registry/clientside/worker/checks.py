"""The smoke checks: attach an adapter with PEFT, prove every tensor of its files was applied,
forward the probes, detach, and prove the base is what it was.

PEFT's ``load_adapter`` drops tensors that match no parameter of the model with at most a
warning (its result lists them only as unexpected keys of a renamed state dict). Here the
adapter's own state dict, as PEFT would save it again (``get_peft_model_state_dict``), is
compared with the file: a tensor of the file with no counterpart there, or with other values,
was not applied; an adapter parameter the file lacks kept its initial value.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftConfig, PeftModel, get_peft_model_state_dict
from peft.auto import MODEL_TYPE_TO_PEFT_MODEL_MAPPING
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file

from registry.clientside.worker.models import LoadedBase
from registry.validation.schemas import Finding, LoadReport

ADAPTER_WEIGHTS = "adapter_model.safetensors"
NO_CHANGE = ("the adapter does not change the model's outputs: an untrained adapter "
             "(lora_B all zero)?")
SHOWN = 10  # tensor names listed in a message


class AttachFailed(Exception):
    """PEFT could not load the adapter onto the base (the model may be half-modified)."""


@dataclass
class Attached:
    """An adapter attached to a cached base under a unique name."""

    model: Any  # the PeftModel wrapping the cached base
    name: str
    config: Any
    load: LoadReport
    seconds: float


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN])
    return shown + (f" (and {len(keys) - SHOWN} more)" if len(keys) > SHOWN else "")


def attach(base: LoadedBase, adapter_dir: Path, *, name: str) -> Attached:
    """Attach the adapter in ``adapter_dir`` to ``base`` with PEFT under ``name``.

    Raises:
        AttachFailed: PEFT refused it (a shape mismatch, an unknown method, ...).
    """
    start = time.perf_counter()
    try:
        config = PeftConfig.from_pretrained(str(adapter_dir))
        wrapper = MODEL_TYPE_TO_PEFT_MODEL_MAPPING.get(config.task_type, PeftModel)
        model = wrapper(base.model, config, name)
        model.load_adapter(str(adapter_dir), name, is_trainable=False)
        model.eval()
    except Exception as exc:  # whatever PEFT raises, the adapter did not load
        raise AttachFailed(f"{type(exc).__name__}: {str(exc).splitlines()[0][:500]}") from None
    load = applied_report(model, name, adapter_dir / ADAPTER_WEIGHTS)
    if base.model.device.type == "cuda":
        torch.cuda.synchronize(base.model.device)
    return Attached(model=model, name=name, config=config, load=load,
                    seconds=time.perf_counter() - start)


def applied_report(model: Any, name: str, weights: Path) -> LoadReport:
    """Which tensors of ``weights`` PEFT applied to ``model`` under adapter ``name``."""
    in_file = load_file(str(weights))
    in_model = get_peft_model_state_dict(model, adapter_name=name)
    dropped, applied = [], 0
    for key, tensor in sorted(in_file.items()):
        held = in_model.get(key)
        if held is None or held.shape != tensor.shape:
            dropped.append(key)
            continue
        # Compared in the dtype PEFT keeps it in: the load cast the file's tensor the same way.
        if not _same_values(held.detach().cpu(), tensor.to(held.dtype)):
            dropped.append(key)
            continue
        applied += 1
    missing = sorted(set(in_model) - set(in_file))
    return LoadReport(loaded=True, file_tensors=len(in_file), applied_tensors=applied,
                      dropped=dropped, missing=missing)


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Exactly equal, NaN equal to NaN (a NaN weight was applied too: the smoke forward
    reports it)."""
    if a.is_floating_point():
        return bool(torch.allclose(a, b, rtol=0.0, atol=0.0, equal_nan=True))
    return torch.equal(a, b)


def load_findings(load: LoadReport) -> list[Finding]:
    out = []
    if load.dropped:
        out.append(Finding(code="tensors_dropped", message=(
            f"{len(load.dropped)} of {load.file_tensors} tensors in the adapter's files were "
            f"not applied by PEFT (they match no parameter of the model): "
            f"{_names(load.dropped)}")))
    if load.missing:
        out.append(Finding(code="tensors_missing", message=(
            f"{len(load.missing)} adapter parameters are not in its files and keep their "
            f"initial values: {_names(load.missing)}")))
    return out


def _comparable(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    # Prompt learning prepends virtual tokens: the positions that correspond are the last ones.
    if out.dim() >= 2 and ref.dim() >= 2 and out.shape[1] > ref.shape[1]:
        return out[:, -ref.shape[1]:]
    return out


@dataclass
class SmokeResult:
    findings: list[Finding] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    forward_seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.findings


@torch.no_grad()
def smoke(base: LoadedBase, attached: Attached) -> SmokeResult:
    """Forward the probes through the adapted model: finite outputs that differ from the base's."""
    result = SmokeResult()
    start = time.perf_counter()
    outputs = base.run(attached.model)
    result.forward_seconds = time.perf_counter() - start
    nonfinite = sum(int((~torch.isfinite(o)).sum()) for o in outputs)
    result.scores["nonfinite_outputs"] = float(nonfinite)
    if nonfinite:
        total = sum(o.numel() for o in outputs)
        result.findings.append(Finding(code="nonfinite", message=(
            f"outputs contain NaN/Inf ({nonfinite} of {total} values on the probes)")))
        return result
    deltas = []
    for out, ref in zip(outputs, base.outputs, strict=True):
        out = _comparable(out, ref)
        if out.shape != ref.shape:
            deltas.append(float("inf"))  # another output shape is a change
            continue
        deltas.append(float((out.float() - ref.float()).abs().max()))
    max_delta = max(deltas)
    if max_delta != float("inf"):
        result.scores["max_abs_delta"] = max_delta
        result.scores["mean_probe_max_abs_delta"] = sum(deltas) / len(deltas)
    if max_delta == 0.0:
        result.findings.append(Finding(code="no_change", message=NO_CHANGE))
    return result


def detach(base: LoadedBase, attached: Attached) -> float:
    """Remove the adapter (``delete_adapter``) and unwrap PEFT's layers; returns the seconds."""
    start = time.perf_counter()
    attached.model.delete_adapter(attached.name)
    if not attached.config.is_prompt_learning:
        # Tuner layers without adapters stay in the model otherwise, and pile up job after job.
        attached.model.base_model.unload()
    return time.perf_counter() - start


@torch.no_grad()
def base_unchanged(base: LoadedBase) -> Finding | None:
    """None when the base reproduces its cached probe outputs bit for bit (and holds no PEFT
    layer); else why not (the caller reloads it)."""
    leftovers = [n for n, m in base.model.named_modules() if isinstance(m, BaseTunerLayer)]
    if leftovers:
        return Finding(code="base_changed", message=(
            f"after detaching the adapter, PEFT layers remain in the base model "
            f"({_names(leftovers)}); the base was reloaded"))
    for out, ref in zip(base.run(base.model), base.outputs, strict=True):
        if out.shape != ref.shape or not torch.equal(out, ref):
            diff = (float((out.float() - ref.float()).abs().max())
                    if out.shape == ref.shape else float("nan"))
            return Finding(code="base_changed", message=(
                f"after detaching the adapter, the base model's outputs differ from before "
                f"(max |Δ| {diff:.3g}): the adapter changed the base's own weights; the base "
                "was reloaded"))
    return None
