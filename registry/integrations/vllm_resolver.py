"""What the vLLM LoRA resolver does, without vLLM: resolve ``NAME@ALIAS`` (or ``NAME:VERSION``)
to an immutable version, check it fits the model vLLM serves, and pull it verified into a
per-version cache directory. `registry.integrations.vllm_plugin` wraps it in vLLM's
``LoRAResolver`` class; this module never imports vLLM, so it runs and is tested anywhere.

Which served model a registry base model is (vLLM hands resolvers ``model_config.model``: the
path or Hugging Face repo id given to ``vllm serve``), in order:

1. the base model's registry name (``vllm serve tiny-llama`` with a base named ``tiny-llama``);
2. the Hugging Face repo id of an ``hf://org/repo[@rev]`` source (``org/repo``);
3. the local directory a base was registered from (its ``file://`` source), as a path;
4. the served path's last component (``/models/tiny-llama`` or ``org/tiny-llama``), compared
   with the base model's name.

A version linked to no base, or to a base that is none of these, is refused: vLLM would load
it onto weights it was not trained for.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from registry.adapters.schemas import VersionOut
from registry.backend import RegistryBackend
from registry.base_models.schemas import BaseModelOut
from registry.clientside.manifest import holds
from registry.clientside.transfer import pull_if_changed, resolve
from registry.errors import CheckFailed, OutputExists
from registry.formats.peft_methods import VLLM
from registry.refs import parse_ref

# "/" (a namespace) cannot be part of a directory name; "+" cannot be part of a registry name,
# so "team/bot" → "team+bot" names one adapter only. The version follows as "--v<N>".
NAMESPACE_SEP = "+"


def cache_dir_name(name: str, version: int) -> str:
    """The cache directory of one version: ``support-bot--v7``, ``team+bot--v3``."""
    return f"{name.replace('/', NAMESPACE_SEP)}--v{version}"


def served_names(base: BaseModelOut) -> set[str]:
    """The ``model_config.model`` values that name ``base`` (rules 1-3 of the module doc)."""
    names = {base.name}
    source = base.source
    if source.startswith("hf://"):
        names.add(source[len("hf://"):].split("@", 1)[0].strip("/"))
    elif source.startswith("file://"):
        names.add(os.path.normpath(unquote(urlparse(source).path)))
    return names


def base_matches(base: BaseModelOut, served: str) -> bool:
    """Whether vLLM serving ``served`` serves ``base`` (the module doc's rules)."""
    candidates = served_names(base)
    if served in candidates:
        return True
    if served.startswith(("/", "./", "../", "~")) and os.path.normpath(
            os.path.expanduser(served)) in candidates:
        return True
    last = PurePosixPath(served.rstrip("/")).name
    return last == base.name


def check_servable(version: VersionOut, base: BaseModelOut | None, served: str) -> None:
    """Refuse a version vLLM must not load for ``served``.

    Raises:
        CheckFailed: not linked to a base, linked to another base, statically incompatible
            with its base, or of a kind vLLM does not serve (the registry's serving verdict).
    """
    if base is None:
        raise CheckFailed(f"{version.ref} is linked to no registered base model: cannot check "
                          f"that it fits {served!r}")
    if not base_matches(base, served):
        raise CheckFailed(
            f"{version.ref} is for base model {base.name!r} (source {base.source}), not the "
            f"served model {served!r}")
    verdict = version.compatibility
    if verdict is not None and not verdict.compatible:
        reasons = "; ".join(r.message for r in verdict.reasons) or "see compat"
        raise CheckFailed(f"{version.ref} is incompatible with {base.name}: {reasons}")
    engine = verdict.serving.get(VLLM) if verdict is not None else None
    if engine is not None and not engine.supported:
        reasons = "; ".join(r.message for r in engine.reasons) or "unsupported"
        raise CheckFailed(f"vLLM cannot serve {version.ref}: {reasons}")
    if verdict is None and version.peft_type != "LORA":
        raise CheckFailed(f"vLLM serves LoRA adapters; {version.ref} is {version.peft_type}")


def resolve_and_pull(client: RegistryBackend, base_model_name: str, lora_name: str,
                     cache_dir: Path) -> tuple[str, Path]:
    """Resolve ``lora_name`` to one version, check it fits ``base_model_name`` and make its
    files present, verified, in ``cache_dir/<name>--v<version>``.

    A version already complete there (its pull manifest and file sizes: `manifest.holds`) is
    used as it is; otherwise it is downloaded into a staging directory and renamed into place
    (two servers pulling it at once both end with the same complete directory).

    Args:
        client: The registry (``HttpRegistry`` in a vLLM server).
        base_model_name: What vLLM serves (``model_config.model``).
        lora_name: ``NAME@ALIAS``, ``NAME:VERSION`` or ``NAME`` (latest) as the request named it.
        cache_dir: ``VLLM_LORA_RESOLVER_CACHE_DIR``.

    Returns:
        The versioned name (``support-bot:7``: immutable, unlike the alias) and the directory.

    Raises:
        InvalidReference: ``lora_name`` is not a reference.
        NotFound subclasses: no such adapter, version or alias.
        CheckFailed: the version does not fit the served model (`check_servable`).
        DigestMismatch, RegistryError: the pull failed (nothing is left half-written).
    """
    parse_ref(lora_name)  # InvalidReference before any request
    version = resolve(client, lora_name)
    base = (client.get_base(version.base_model, version.base_model_revision)
            if version.base_model is not None else None)
    check_servable(version, base, base_model_name)
    target = Path(cache_dir) / cache_dir_name(version.name, version.version)
    if not holds(target, version):
        try:
            # The exact version, not the alias: a promotion while this runs cannot mix two.
            pull_if_changed(client, ref=version.ref, directory=target)
        except OutputExists:
            if not holds(target, version):  # not another process finishing the same pull
                raise
    return version.ref, target
