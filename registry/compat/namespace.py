"""Map module paths between PEFT keys and a base checkpoint; match target_modules as PEFT does.

An adapter's module paths are relative to the model PEFT wrapped, usually a task wrapper
(LlamaForCausalLM: `model.layers.0.self_attn.q_proj`, `lm_head`). A base checkpoint may have
been saved from that class or from the bare backbone (LlamaModel: `layers.0.self_attn.q_proj`),
and transformers loads either layout into either class by adding or dropping the backbone's
`base_model_prefix`. The rule here: one prefix transform is chosen for the whole pair, among
identity, "drop a leading `<p>.`" (p a first segment of the adapter's paths) and "add a leading
`<p>.`" (p a first segment of the base's tensor names); the one under which most adapter modules
exist in the base wins, identity on a tie. A dropped prefix leaves paths outside it (`lm_head`)
unchanged: they are the task head, which a bare checkpoint does not have.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from registry.formats.safetensors import TensorInfo


@dataclass(frozen=True)
class PrefixMap:
    """How adapter module paths translate to base checkpoint names (at most one of the two)."""

    strip: str | None = None
    add: str | None = None

    def to_base(self, path: str) -> str:
        """The base checkpoint name of an adapter-namespace path."""
        if self.strip is not None and path.startswith(self.strip + "."):
            return path[len(self.strip) + 1 :]
        if self.add is not None:
            return f"{self.add}.{path}"
        return path

    def to_adapter(self, name: str) -> str | None:
        """The adapter-namespace path of a base name; None if the loaded model would not have it."""
        if self.strip is not None:
            return f"{self.strip}.{name}"
        if self.add is not None:
            prefix = self.add + "."
            return name[len(prefix) :] if name.startswith(prefix) else None
        return name

    def describe(self) -> str:
        """A phrase for messages, e.g. "base names lack the 'model.' prefix"."""
        if self.strip is not None:
            return f"base names lack the {self.strip + '.'!r} prefix"
        if self.add is not None:
            return f"base names carry an extra {self.add + '.'!r} prefix"
        return "same names"


def module_prefixes(names: Iterable[str]) -> set[str]:
    """Every dotted prefix of every name: the modules (and containers) a checkpoint implies."""
    out: set[str] = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts)):
            out.add(".".join(parts[:i]))
    return out


def align(adapter_paths: Iterable[str], base_tensors: Mapping[str, TensorInfo]) -> PrefixMap:
    """Choose the prefix transform under which most adapter module paths exist in the base.

    Args:
        adapter_paths: Module paths in the adapter's namespace.
        base_tensors: The base checkpoint's tensor names (values unused).

    Returns:
        The PrefixMap; identity when no transform does better.
    """
    paths = sorted(set(adapter_paths))
    modules = module_prefixes(base_tensors)
    candidates = [PrefixMap()]
    candidates += [PrefixMap(strip=p) for p in sorted({q.split(".")[0] for q in paths if "." in q})]
    candidates += [PrefixMap(add=p) for p in sorted({n.split(".")[0] for n in base_tensors})]

    def score(m: PrefixMap) -> int:
        return sum(m.to_base(p) in modules for p in paths)

    best = candidates[0]
    best_score = score(best)
    for candidate in candidates[1:]:
        s = score(candidate)
        if s > best_score:
            best, best_score = candidate, s
    return best


def pattern_matches(pattern: str, key: str, *, full: bool = False) -> bool:
    """re.fullmatch / re.match of a config-supplied pattern; an invalid pattern matches nothing.

    PEFT would raise on such a pattern; a verdict must not, and the upload checks report it.
    """
    try:
        return bool(re.fullmatch(pattern, key) if full else re.match(pattern, key))
    except re.error:
        return False


_INDEX = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def layer_index(path: str) -> int | None:
    """The first all-digit segment of a module path (the block index), e.g. 3 in `h.3.attn`."""
    match = _INDEX.search(path)
    return int(match.group(1)) if match else None


def _layer_filter(raw: Mapping[str, Any], key: str) -> bool:
    # peft.tuners.tuners_utils.check_target_module_exists: layers_to_transform applies to
    # suffix matches, with the index taken after layers_pattern (or after any segment).
    indexes = raw.get("layers_to_transform")
    if indexes is None or (isinstance(indexes, list) and not indexes):
        return True
    pattern = raw.get("layers_pattern")
    match = None
    if not pattern:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
    else:
        for p in [pattern] if isinstance(pattern, str) else list(pattern):
            try:
                match = re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", key)
            except re.error:
                match = None
            if match is not None:
                break
    if match is None:
        return False
    index = int(match.group("idx"))
    return index == indexes if isinstance(indexes, int) else index in indexes


def is_targeted(raw: Mapping[str, Any], targets: list[str] | str, key: str) -> bool:
    """Whether PEFT would inject an adapter layer into the module `key` (adapter namespace).

    Mirrors peft 0.21 check_target_module_exists: exclude_modules and modules_to_save win; a
    string target is a full-match regex; a list entry matches the whole key or a dotted suffix,
    and only suffix matches are narrowed by layers_to_transform / layers_pattern.

    Args:
        raw: The parsed adapter_config.json.
        targets: target_modules as used (a regex string or a list of names).
        key: Module path in the adapter's namespace.

    Returns:
        True when the module is targeted.
    """
    exclude = raw.get("exclude_modules")
    if exclude:
        if isinstance(exclude, str):
            if pattern_matches(exclude, key, full=True):
                return False
        elif key in exclude or any(key.endswith(f".{e}") for e in exclude):
            return False
    modules_to_save = raw.get("modules_to_save") or []
    if isinstance(modules_to_save, str):
        modules_to_save = [modules_to_save]
    if any(pattern_matches(rf"(^|.*\.){m}($|\..*)", key) for m in modules_to_save):
        return False
    if isinstance(targets, str):
        return pattern_matches(targets, key, full=True)
    if key in targets:
        return True
    if not any(key.endswith(f".{t}") for t in targets):
        return False
    return _layer_filter(raw, key)
