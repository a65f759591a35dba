"""Add an eval suite from local files (checked here first, then uploaded and recorded)."""

from __future__ import annotations

from pathlib import Path

from registry.backend import RegistryBackend
from registry.clientside.ci_env import detect_provenance
from registry.clientside.transfer import upload_files
from registry.config import Settings
from registry.db.enums import SuiteKind
from registry.errors import InvalidInput, TooLarge
from registry.evals.metrics import check_suite_name
from registry.evals.schemas import CreateSuiteIn, SuiteOut
from registry.evals.suites import (
    check_kind,
    check_options,
    check_suite_files,
    lm_eval_data_files,
    parse_lm_eval_yaml,
)


def suite_paths(kind: SuiteKind, file: Path) -> list[str]:
    """The suite's files relative to ``file``'s directory: the file itself, and for an lm-eval
    task YAML the data files it names."""
    if kind != SuiteKind.lm_eval:
        return [file.name]
    config = parse_lm_eval_yaml(file.read_bytes(), path=file.name)
    return [file.name, *dict.fromkeys(lm_eval_data_files(config, path=file.name))]


def add_suite(backend: RegistryBackend, *, name: str, file: Path, kind: str,
              options: dict[str, str], settings: Settings) -> tuple[SuiteOut, bool]:
    """Check the suite locally, upload its files, and record it (a new version when the content
    differs from the latest).

    Raises:
        InvalidInput (the first bad line, named), TooLarge, and what the backend raises.
    """
    check_suite_name(name)
    suite_kind = check_kind(kind)
    check_options(suite_kind, options)
    if not file.is_file():
        raise InvalidInput(f"{file} is not a file")
    directory = file.parent
    paths = suite_paths(suite_kind, file)
    data = {}
    for path in paths:
        local = directory / path
        if not local.is_file():
            raise InvalidInput(f"{file.name}: data file {path} does not exist in {directory}")
        size = local.stat().st_size
        if size > settings.max_suite_bytes:
            raise TooLarge(f"{path}: {size} bytes exceed the suite limit of "
                           f"{settings.max_suite_bytes} bytes (REGISTRY_MAX_SUITE_BYTES)")
        data[path] = local.read_bytes()
    check_suite_files(suite_kind, data)
    files, _, _ = upload_files(backend, directory, paths, None)
    body = CreateSuiteIn(name=name, kind=suite_kind.value, files=files, options=dict(options),
                         created_by=detect_provenance().created_by)
    return backend.create_suite(body)
