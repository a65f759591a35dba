"""The RegistryError tree: every condition a user can cause has its own class.

The API maps each class to an HTTP status and a stable error code; the CLI prints the detail
on one line and exits non-zero. The class docstring is the default message.
"""

from __future__ import annotations


class RegistryError(Exception):
    """The registry could not complete the request."""

    status_code: int = 400
    code: str = "registry_error"
    # Extra HTTP response headers the API sends with this error (e.g. Content-Range on 416).
    headers: dict[str, str] | None = None

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail or (self.__class__.__doc__ or "").strip().splitlines()[0]
        super().__init__(self.detail)


# --- 400/422: the input is wrong -------------------------------------------------------------


class InvalidInput(RegistryError, ValueError):
    """The request is malformed."""

    status_code = 422
    code = "invalid_input"


class InvalidName(InvalidInput):
    """Invalid adapter name."""

    code = "invalid_name"


class InvalidReference(InvalidInput):
    """Invalid reference; use NAME, NAME:VERSION or NAME@ALIAS."""

    code = "invalid_reference"


class InvalidAlias(InvalidInput):
    """Invalid alias name: a lowercase letter, then lowercase letters, digits or '-' (<= 63)."""

    code = "invalid_alias"


class InvalidPath(InvalidInput):
    """Invalid file path inside an adapter."""

    code = "invalid_path"


class InvalidDigest(InvalidInput):
    """Invalid digest; expected sha256:<64 hex digits>."""

    code = "invalid_digest"


class InvalidAdapter(InvalidInput):
    """The adapter failed a static check."""

    code = "invalid_adapter"


class UnsafeFormat(InvalidAdapter):
    """Pickle-based weight files are refused; convert them to safetensors."""

    code = "unsafe_format"


class InvalidSafetensors(InvalidAdapter):
    """The safetensors file is malformed."""

    code = "invalid_safetensors"


class InvalidAdapterConfig(InvalidAdapter):
    """adapter_config.json is missing or invalid."""

    code = "invalid_adapter_config"


class TensorMismatch(InvalidAdapter):
    """The adapter's tensors do not match its configuration."""

    code = "tensor_mismatch"


class InvalidBaseModel(InvalidInput):
    """The base model checkpoint is unusable."""

    code = "invalid_base_model"


class SourceUnavailable(InvalidInput):
    """The model source could not be reached or resolved."""

    code = "source_unavailable"


class InvalidExport(InvalidInput):
    """The merged export is not a loadable checkpoint of its base model's tensors."""

    code = "invalid_export"


class Unmergeable(InvalidAdapter):
    """This adapter cannot be merged into its base model."""

    code = "unmergeable"


class IncompatibleBase(Unmergeable):
    """The adapter does not fit the base model (merged export)."""

    code = "incompatible_base"


class QuantizedBase(Unmergeable):
    """Adapters cannot be merged into quantized base weights."""

    code = "quantized_base"


class DestinationNotAllowed(InvalidInput):
    """The webhook destination is not allowed (private, loopback or link-local address)."""

    code = "destination_not_allowed"


class OutputExists(InvalidInput):
    """The export directory exists and is not empty."""

    code = "output_exists"


class DigestMismatch(InvalidInput):
    """The uploaded content does not match the claimed digest."""

    status_code = 400
    code = "digest_mismatch"


class RangeNotSatisfiable(InvalidInput):
    """The requested byte range lies outside the blob."""

    status_code = 416
    code = "range_not_satisfiable"

    def __init__(self, detail: str | None = None, *, size: int | None = None) -> None:
        super().__init__(detail)
        if size is not None:
            self.headers = {"Content-Range": f"bytes */{size}"}


class TooLarge(InvalidInput):
    """The content exceeds the configured size limit."""

    status_code = 413
    code = "too_large"


# --- 401/403: who is asking, and what they may do ------------------------------------------------


class Unauthenticated(RegistryError):
    """A valid API token is required (Authorization: Bearer arg_…)."""

    status_code = 401
    code = "unauthenticated"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail)
        self.headers = {"WWW-Authenticate": "Bearer"}



class Forbidden(RegistryError):
    """This registry does not allow the request."""

    status_code = 403
    code = "forbidden"


class PermissionDenied(Forbidden):
    """The token does not allow this: a scope it lacks, or an adapter outside its namespaces."""

    code = "permission_denied"


class SourceNotAllowed(Forbidden):
    """The registry does not read this base-model source on a client's behalf."""

    code = "source_not_allowed"


# --- 404: something named does not exist -----------------------------------------------------


class NotFound(RegistryError, LookupError):
    """Not found."""

    status_code = 404
    code = "not_found"


class AdapterNotFound(NotFound):
    """No such adapter."""

    code = "adapter_not_found"


class VersionNotFound(NotFound):
    """No such adapter version."""

    code = "version_not_found"


class BlobNotFound(NotFound):
    """No such blob."""

    code = "blob_not_found"


class BaseModelNotFound(NotFound):
    """No such base model."""

    code = "base_model_not_found"


class AliasNotFound(NotFound):
    """No such alias."""

    code = "alias_not_found"


class PolicyNotFound(NotFound):
    """No such promotion policy."""

    code = "policy_not_found"
class TokenNotFound(NotFound):
    """No such API token."""

    code = "token_not_found"


class JobNotFound(NotFound):
    """No such job."""

    code = "job_not_found"


class SuiteNotFound(NotFound):
    """No such eval suite."""

    code = "suite_not_found"


class WebhookNotFound(NotFound):
    """No such webhook."""

    code = "webhook_not_found"


# --- 409: the request contradicts what is stored ---------------------------------------------


class Conflict(RegistryError):
    """The request conflicts with the registry's current state."""

    status_code = 409
    code = "conflict"


class BaseModelConflict(Conflict):
    """A base model with this name is registered with different weights."""

    code = "base_model_conflict"


class IdempotencyConflict(Conflict):
    """The idempotency key was already used for different content."""

    code = "idempotency_conflict"


class AliasMoved(Conflict):
    """The alias does not point where --expect-current said (it moved meanwhile)."""

    code = "alias_moved"


class VersionArchived(Conflict):
    """The version is archived: it can no longer be promoted or rolled back to."""

    code = "version_archived"


class VersionAliased(Conflict):
    """An alias points at this version; move or delete the alias first."""

    code = "version_aliased"


class NoRollbackTarget(Conflict):
    """There is no earlier version of this alias to roll back to."""

    code = "no_rollback_target"


class AliasProtected(Conflict):
    """The alias is protected by its promotion policy."""

    code = "alias_protected"
class TokenExists(Conflict):
    """An API token with this name exists (revoked names stay taken: the audit log uses them)."""

    code = "token_exists"


class JobStateConflict(Conflict):
    """The job is not in a state that allows this (e.g. cancelling a finished job)."""

    code = "job_state_conflict"


class LeaseLost(Conflict):
    """This worker no longer holds the job: its lease was taken over, or the job was cancelled.

    The attempt number (and the worker's id) fence reports: a worker whose lease expired and
    was taken over by another one can no longer heartbeat, complete or fail the job.
    """

    code = "lease_lost"


# --- 422 (exit 6): a check said no ------------------------------------------------------------


class CheckFailed(RegistryError):
    """A check said no."""

    status_code = 422
    code = "check_failed"


class GateFailed(CheckFailed):
    """A promotion gate failed; nothing was changed."""

    code = "gate_failed"
class ValidationFailed(CheckFailed):
    """The validation of an adapter version failed (it loaded wrong, or a smoke check said no)."""

    code = "validation_failed"


# --- 5xx: the registry's own dependencies ------------------------------------------------------


class StorageError(RegistryError):
    """The blob store failed."""

    status_code = 503
    code = "storage_unavailable"


class BlobBusy(StorageError):
    """Garbage collection is removing this blob; retry the upload."""

    code = "blob_busy"


class InsufficientStorage(StorageError):
    """The blob store is full (no space left, a quota, a file size limit)."""

    status_code = 507
    code = "insufficient_storage"


class RegistryUnavailable(RegistryError):
    """The registry server could not be reached."""

    status_code = 503
    code = "unavailable"


class DatabaseUnavailable(RegistryUnavailable):
    """The registry database is unavailable; try again later."""

    code = "database_unavailable"


class SchemaOutdated(RegistryError):
    """The database schema is not at the current migration; run `adapter-registry db upgrade`."""

    status_code = 503
    code = "schema_out_of_date"


def classes_by_code() -> dict[str, type[RegistryError]]:
    """Every error class of this module by its code; the HTTP client maps codes back with it.

    Built from this module alone, so the map does not depend on which other modules happen to
    be imported.
    """
    found: dict[str, type[RegistryError]] = {}
    for value in list(globals().values()):
        if isinstance(value, type) and issubclass(value, RegistryError):
            found.setdefault(value.code, value)
    return found
