"""Eval suite files and options (pure): what each kind's data look like, and which adapters a
kind fits. The CLI runs these checks on local files before uploading, the server again on the
stored blobs, so a bad suite is refused with the same message either way.

Kinds:

- ``perplexity``: JSON lines ``{"text": ...}``; a causal LM's perplexity on them.
- ``generate``: ``{"prompt", "expected", "match": "contains|exact|regex"}`` (``match`` defaults
  to ``contains``); greedy generation of ``max_new_tokens`` (option, default 32); ``pass_rate``.
- ``classify``: ``{"text", "label"}`` (a label index or one of the model's label names);
  a sequence classifier's ``accuracy``.
- ``lm-eval``: an lm-evaluation-harness task YAML whose data are local files of the suite
  (``dataset_path: json|csv|parquet|text`` and ``dataset_kwargs.data_files``). ``!function``
  tags are refused: they would run Python code from the suite on every worker.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from registry.db.enums import SuiteKind
from registry.errors import InvalidInput, TooLarge

MAX_ITEMS = 100_000
JSONL_KINDS = (SuiteKind.perplexity, SuiteKind.generate, SuiteKind.classify)
CAUSAL_KINDS = (SuiteKind.perplexity, SuiteKind.generate, SuiteKind.lm_eval)
MATCH_MODES = ("contains", "exact", "regex")
LM_EVAL_DATASETS = ("json", "csv", "parquet", "text", "arrow")

# Options each kind takes: name -> (minimum, maximum, default or None).
OPTIONS: dict[SuiteKind, dict[str, tuple[int, int, int | None]]] = {
    SuiteKind.perplexity: {"max_length": (2, 1_000_000, None)},
    SuiteKind.generate: {"max_new_tokens": (1, 4096, 32)},
    SuiteKind.classify: {"max_length": (2, 1_000_000, None)},
    SuiteKind.lm_eval: {"limit": (1, 1_000_000, None), "num_fewshot": (0, 100, None),
                        "batch_size": (1, 1024, 1)},
}


def check_kind(kind: str) -> SuiteKind:
    """Raises: InvalidInput (an unknown kind, with the known ones)."""
    try:
        return SuiteKind(kind)
    except ValueError:
        known = ", ".join(k.value for k in SuiteKind)
        raise InvalidInput(f"unknown suite kind {str(kind)[:40]!r}; use one of {known}") from None


def check_options(kind: SuiteKind, options: Mapping[str, object]) -> dict[str, int]:
    """The suite's options as integers, defaults filled in.

    Raises:
        InvalidInput: an option the kind does not take, or a value out of range.
    """
    allowed = OPTIONS[kind]
    out: dict[str, int] = {}
    for key, raw in options.items():
        if key not in allowed:
            names = ", ".join(sorted(allowed)) or "none"
            raise InvalidInput(f"a {kind.value} suite has no option {key!r} (options: {names})")
        low, high, _ = allowed[key]
        try:
            if isinstance(raw, bool) or not isinstance(raw, int | str):
                raise ValueError
            value = int(raw)
        except ValueError:
            raise InvalidInput(f"option {key}: expected an integer, got {raw!r}") from None
        if not low <= value <= high:
            raise InvalidInput(f"option {key}: {value} is outside {low}..{high}")
        out[key] = value
    for key, (_, _, default) in allowed.items():
        if key not in out and default is not None:
            out[key] = default
    return out


def _lines(data: bytes, path: str) -> Iterable[tuple[int, str]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_line = data[: exc.start].count(b"\n") + 1
        raise InvalidInput(f"{path} line {bad_line}: not UTF-8 text") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, line


def _field(item: dict[str, Any], name: str, where: str, *, types: tuple[type, ...] = (str,),
           required: bool = True) -> Any:
    if name not in item:
        if required:
            raise InvalidInput(f"{where}: missing field {name!r}")
        return None
    value = item[name]
    if isinstance(value, bool) or not isinstance(value, types):
        kinds = " or ".join(t.__name__ for t in types)
        raise InvalidInput(f"{where}: field {name!r} must be a {kinds}, got {value!r:.60}")
    if isinstance(value, str) and not value.strip() and name in ("text", "prompt"):
        raise InvalidInput(f"{where}: field {name!r} is empty")
    return value


def check_item(kind: SuiteKind, item: object, where: str) -> None:
    """One JSON line of a perplexity, generate or classify suite.

    Raises:
        InvalidInput: not an object, a missing field, a field of the wrong type, an unknown
            match mode, a regex that does not compile.
    """
    if not isinstance(item, dict):
        raise InvalidInput(f"{where}: expected a JSON object, got {type(item).__name__}")
    if kind == SuiteKind.perplexity:
        _field(item, "text", where)
    elif kind == SuiteKind.generate:
        _field(item, "prompt", where)
        expected = _field(item, "expected", where)
        match = _field(item, "match", where, required=False) or "contains"
        if match not in MATCH_MODES:
            raise InvalidInput(f"{where}: match must be one of {', '.join(MATCH_MODES)}, "
                               f"got {match!r}")
        if match == "regex":
            try:
                re.compile(expected)
            except re.error as exc:
                raise InvalidInput(f"{where}: expected is not a valid regex: {exc}") from None
    elif kind == SuiteKind.classify:
        _field(item, "text", where)
        label = _field(item, "label", where, types=(int, str))
        if isinstance(label, int) and label < 0:
            raise InvalidInput(f"{where}: label index must be >= 0, got {label}")


def check_jsonl(kind: SuiteKind, data: bytes, *, path: str = "suite file",
                max_items: int = MAX_ITEMS) -> int:
    """Check a suite's JSON lines (blank lines are skipped); returns the number of items.

    Raises:
        InvalidInput: an empty file, or the first bad line (named by its number).
        TooLarge: more than ``max_items`` items.
    """
    count = 0
    for number, line in _lines(data, path):
        where = f"{path} line {number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        check_item(kind, item, where)
        count += 1
        if count > max_items:
            raise TooLarge(f"{path}: more than {max_items} items")
    if count == 0:
        raise InvalidInput(f"{path} is empty: a {kind.value} suite needs at least one JSON line")
    return count


def parse_lm_eval_yaml(data: bytes, *, path: str = "task.yaml") -> dict[str, Any]:
    """An lm-evaluation-harness task YAML whose data are local files.

    Returns:
        The task config.

    Raises:
        InvalidInput: not YAML, ``!function`` (or another tag), no ``task``, ``include``, or
            data that are not local files of the suite.
    """
    import yaml  # on first use: only lm-eval suites are YAML

    try:
        config = yaml.safe_load(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidInput(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path} line {mark.line + 1}" if mark is not None else path
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        hint = (" (!function tags are refused: they would run code from the suite)"
                if "!function" in str(exc) else "")
        raise InvalidInput(f"{where}: invalid task YAML: {problem}{hint}") from None
    if not isinstance(config, dict):
        raise InvalidInput(f"{path}: expected a mapping of task options")
    task = config.get("task")
    if not isinstance(task, str) or not task:
        raise InvalidInput(f"{path}: missing 'task' (the task's name)")
    if "include" in config:
        raise InvalidInput(f"{path}: 'include' is not supported; put the whole task in one file")
    if config.get("dataset_path") not in LM_EVAL_DATASETS:
        raise InvalidInput(
            f"{path}: the task's data must be local files of the suite: set dataset_path to one "
            f"of {', '.join(LM_EVAL_DATASETS)} and dataset_kwargs.data_files"
        )
    lm_eval_data_files(config, path=path)
    return config


def lm_eval_data_files(config: Mapping[str, Any], *, path: str = "task.yaml") -> list[str]:
    """The relative paths named by ``dataset_kwargs.data_files`` (a path, list or split map).

    Raises:
        InvalidInput: none named, or one that is absolute or leaves the suite.
    """
    kwargs = config.get("dataset_kwargs") or {}
    named = kwargs.get("data_files") if isinstance(kwargs, dict) else None
    if isinstance(named, str):
        files = [named]
    elif isinstance(named, list):
        files = named
    elif isinstance(named, dict):
        files = []
        for value in named.values():
            files.extend(value if isinstance(value, list) else [value])
    else:
        raise InvalidInput(f"{path}: dataset_kwargs.data_files must name the suite's data files")
    out = []
    for f in files:
        if not isinstance(f, str) or not f or f.startswith(("/", "\\")) or ".." in f.split("/"):
            raise InvalidInput(f"{path}: data file {f!r} must be a relative path inside the suite")
        out.append(f)
    return out


def check_suite_files(kind: SuiteKind, files: Mapping[str, bytes]) -> int:
    """Check every file of a suite; returns its item count.

    Args:
        kind: the suite kind.
        files: relative path -> content (a JSON-lines kind takes exactly one file; lm-eval
            one task YAML plus the data files it names).

    Raises:
        InvalidInput, TooLarge.
    """
    if not files:
        raise InvalidInput("a suite needs its data file")
    if kind in JSONL_KINDS:
        if len(files) != 1:
            raise InvalidInput(f"a {kind.value} suite is one JSON-lines file, got {len(files)}")
        [(path, data)] = files.items()
        return check_jsonl(kind, data, path=path)
    yamls = [p for p in files if p.endswith((".yaml", ".yml"))]
    if len(yamls) != 1:
        raise InvalidInput(f"an lm-eval suite has exactly one task YAML, got {len(yamls)}")
    config = parse_lm_eval_yaml(files[yamls[0]], path=yamls[0])
    count = 0
    for name in lm_eval_data_files(config, path=yamls[0]):
        if name not in files:
            raise InvalidInput(f"{yamls[0]}: data file {name!r} is not part of the suite")
        data = files[name]
        if not data.strip():
            raise InvalidInput(f"{name} is empty")
        if name.endswith(".jsonl"):
            for number, line in _lines(data, name):
                try:
                    json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InvalidInput(f"{name} line {number}: invalid JSON: {exc.msg} "
                                       f"(column {exc.colno})") from None
                count += 1
    return count


def suite_fit(kind: SuiteKind, *, task_type: str | None,
              architectures: Iterable[str] | None) -> str | None:
    """Why a suite of ``kind`` cannot run on an adapter, or None when it fits.

    The adapter's task type decides; without one, the base model's class does.
    """
    causal = kind in CAUSAL_KINDS
    wanted = "CAUSAL_LM" if causal else "SEQ_CLS"
    what = ("a causal language model (task type CAUSAL_LM)" if causal
            else "a sequence classifier (task type SEQ_CLS)")
    if task_type:
        if task_type != wanted:
            return f"a {kind.value} suite needs {what}; the adapter's task type is {task_type}"
        return None
    archs = list(architectures or [])
    suffixes = ("ForCausalLM", "LMHeadModel") if causal else ("ForSequenceClassification",)
    if not any(a.endswith(suffixes) for a in archs):
        return (f"a {kind.value} suite needs {what}; the adapter has no task type and the base "
                f"model is {', '.join(archs) or 'of an unknown class'}")
    return None
