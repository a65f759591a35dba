"""Typed HTTP client for the registry API; the CLI, CI scripts and remote workers use it.

``HttpRegistry`` implements ``registry.backend.RegistryBackend``, as the embedded
``registry.local.LocalRegistry`` does, so every command runs unchanged against either.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import ssl
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import httpx

from registry import errors
from registry.adapters.schemas import (
    AdapterOut,
    CreateVersionIn,
    LineageOut,
    ScoreOut,
    VersionOut,
)
from registry.auth.names import validate_token_name
from registry.auth.schemas import CreatedTokenOut, CreateTokenIn, TokenOut, WhoamiOut
from registry.backend import Progress
from registry.base_models.schemas import BaseModelOut, RegisterBaseIn
from registry.compat.schemas import CompatibleBaseOut, CompatibleVersionOut, VerdictOut
from registry.evals.metrics import check_metric
from registry.evals.schemas import (
    AttachmentOut,
    AttachSuiteIn,
    CreateSuiteIn,
    RecordScoresIn,
    SuiteOut,
)
from registry.events.schemas import EventPageOut
from registry.events.webhook_schemas import (
    CreatedWebhookOut,
    CreateWebhookIn,
    DeliveryOut,
    WebhookOut,
)
from registry.exports.schemas import TOKEN_PREFIX as TOKEN_PROVENANCE
from registry.exports.schemas import CreateExportIn, ExportOut
from registry.jobs.schemas import (
    ClaimedJobOut,
    ClaimIn,
    CompleteJobIn,
    FailJobIn,
    JobOut,
    LeaseIn,
    LeaseOut,
)
from registry.lifecycle.schemas import (
    AliasChangeIn,
    AliasDeletedOut,
    AliasOut,
    HistoryEntryOut,
    PolicyIn,
    PolicyOut,
    PromoteIn,
    PromoteOut,
    RollbackIn,
    RollbackOut,
)
from registry.refs import validate_alias
from registry.storage import parse_digest
from registry.storage.sink import BackgroundSha256
from registry.validation.schemas import ValidateIn

CHUNK = 1024 * 1024


def check_uploaded(path: Path, stored: str, sent: str) -> str:
    """The digest of an upload named by its content, once the registry's and ours agree.

    Raises:
        DigestMismatch: they differ (the file changed while it was sent, or bytes were damaged
            on the way); the stored blob is referenced by nothing and gc removes it.
    """
    if stored != sent:
        raise errors.DigestMismatch(
            f"{path.name}: the registry stored {stored} but the bytes sent hash to {sent} "
            "(did the file change during the upload?)"
        )
    return stored


_ERRORS = errors.classes_by_code()


def _raise_error(status: int, body: bytes) -> NoReturn:
    code, detail = None, None
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            code, detail = parsed.get("error"), parsed.get("detail")
    except ValueError:
        pass
    cls = _ERRORS.get(str(code or ""))
    if cls is None:
        cls = {401: errors.Unauthenticated, 403: errors.Forbidden, 404: errors.NotFound,
               409: errors.Conflict, 413: errors.TooLarge}.get(
            status, errors.InvalidInput if status < 500 else errors.RegistryUnavailable
        )
    err = cls(str(detail) if detail else f"HTTP {status} from the registry")
    err.status_code = status
    raise err


def _raise_for(response: httpx.Response) -> None:
    if not response.is_success:
        _raise_error(response.status_code, response.content)


def _upload_headers(size: int, pin_seconds: int | None) -> dict[str, str]:
    headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
    if pin_seconds is not None:
        headers["Registry-Pin-Seconds"] = str(pin_seconds)
    return headers


class HttpRegistry:
    """A registry server reached over HTTP.

    Args:
        url: base URL, e.g. ``http://registry:8000``.
        token: bearer token sent with every request, if any.
        timeout: seconds for connect and for each read/write.
    """

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 300.0) -> None:
        headers = {"User-Agent": "adapter-registry-client"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.url = url.rstrip("/")
        self._token = token or None
        self._whoami: WhoamiOut | None = None
        self._headers = headers
        self._timeout = timeout
        # A plain-http registry never negotiates TLS (redirects are not followed), so it skips
        # loading the CA bundle, ~15 ms of every CLI command: a context that trusts no CA at all
        # would refuse any TLS connection anyway.
        verify: ssl.SSLContext | bool = True
        if httpx.URL(self.url).scheme == "http":
            verify = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=10.0),
            verify=verify,
        )

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise errors.RegistryUnavailable(
                f"cannot reach the registry at {self.url}: {exc}"
            ) from None
        _raise_for(response)
        return response

    def blob_exists(self, digest: str) -> bool:
        parse_digest(digest)  # a HEAD answer has no body to name the error: check here
        try:
            self._request("HEAD", f"/api/v1/blobs/{digest}")
        except errors.NotFound:
            return False
        return True

    def pin_blobs(self, digests: list[str], *, seconds: int) -> list[str]:
        response = self._request("POST", "/api/v1/blobs/pins",
                                 json={"digests": digests, "seconds": seconds})
        missing: list[str] = response.json()["missing"]
        return missing

    def upload_blob(self, digest: str, path: Path, *, progress: Progress = None,
                    pin_seconds: int | None = None) -> None:
        size = path.stat().st_size

        def body() -> Iterator[bytes]:
            with path.open("rb") as fh:
                while chunk := fh.read(CHUNK):
                    if progress:
                        progress(len(chunk))
                    yield chunk

        self._request(
            "PUT",
            f"/api/v1/blobs/{digest}",
            content=body(),
            headers=_upload_headers(size, pin_seconds),
        )

    def can_upload_unhashed(self, size: int) -> bool:
        """True when no stored blob has ``size`` bytes and the server names blobs after upload,
        so a file of that size can be sent without hashing it first."""
        try:
            info = self._request("GET", f"/api/v1/blobs/sizes/{size}").json()
        except errors.NotFound:  # a server without the endpoint: hash first, as always
            return False
        return bool(info.get("upload_without_digest")) and info.get("stored") is False

    def upload_new_blob(self, path: Path, *, progress: Progress = None,
                        pin_seconds: int | None = None) -> str:
        """Send a file the server names by its content, hashing it on the way out; returns the
        digest after checking that the server computed the same one."""
        size = path.stat().st_size

        def body(sha: BackgroundSha256) -> Iterator[bytes]:
            with path.open("rb") as fh:
                while chunk := fh.read(CHUNK):
                    sha.update(chunk)  # hashed on a helper thread while the chunk is sent
                    if progress:
                        progress(len(chunk))
                    yield chunk

        with contextlib.closing(BackgroundSha256()) as sha:
            stored = self._request(
                "POST",
                "/api/v1/blobs/uploads",
                content=body(sha),
                headers=_upload_headers(size, pin_seconds),
            ).json()["digest"]
            return check_uploaded(path, stored, f"sha256:{sha.hexdigest()}")

    def download_blob(self, digest: str, out: BinaryIO, *, progress: Progress = None) -> None:
        # The standard library's readinto streams several times faster than httpx's iterators
        # (measured in bench/profile_transfer.py), and a blob download is a plain GET.
        url = httpx.URL(f"{self.url}/api/v1/blobs/{digest}")
        cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        conn = cls(url.host, url.port, timeout=self._timeout)
        write_error: OSError | None = None
        try:
            conn.request("GET", url.raw_path.decode("ascii"), headers=self._headers)
            response = conn.getresponse()
            if response.status != 200:
                _raise_error(response.status, response.read())
            # Two buffers in turn: a sink may still read a chunk (e.g. hash it on another
            # thread) until its next write returns (see registry.storage.sink).
            buffers = (memoryview(bytearray(CHUNK)), memoryview(bytearray(CHUNK)))
            turn = 0
            while n := response.readinto(buffers[turn]):
                try:
                    out.write(buffers[turn][:n])
                except OSError as exc:  # the local disk (full, read-only): not the registry
                    write_error = exc
                    break
                turn ^= 1
                if progress:
                    progress(n)
        except (OSError, http.client.HTTPException) as exc:
            raise errors.RegistryUnavailable(
                f"download of {digest} from {self.url} failed: {exc}"
            ) from None
        finally:
            conn.close()
        if write_error is not None:
            raise write_error

    def create_version(self, name: str, body: CreateVersionIn) -> tuple[VersionOut, bool]:
        response = self._request(
            "POST", f"/api/v1/adapters/{name}/versions", json=body.model_dump(mode="json")
        )
        return VersionOut.model_validate(response.json()), response.status_code == 201

    def get_version(self, name: str, version: int | None) -> VersionOut:
        which = "latest" if version is None else str(version)
        response = self._request("GET", f"/api/v1/adapters/{name}/versions/{which}")
        return VersionOut.model_validate(response.json())

    def list_adapters(self) -> list[AdapterOut]:
        response = self._request("GET", "/api/v1/adapters")
        return [AdapterOut.model_validate(a) for a in response.json()]

    def list_versions(self, name: str) -> list[VersionOut]:
        response = self._request("GET", f"/api/v1/adapters/{name}/versions")
        return [VersionOut.model_validate(v) for v in response.json()]

    def lineage(self, name: str, version: int) -> LineageOut:
        response = self._request("GET", f"/api/v1/adapters/{name}/versions/{version}/lineage")
        return LineageOut.model_validate(response.json())

    def gc(self, *, grace_seconds: int | None, dry_run: bool) -> dict[str, Any]:
        response = self._request(
            "POST", "/api/v1/admin/gc", json={"grace_seconds": grace_seconds, "dry_run": dry_run}
        )
        result: dict[str, Any] = response.json()
        return result

    def register_base(self, body: RegisterBaseIn) -> tuple[BaseModelOut, bool]:
        response = self._request("POST", "/api/v1/base-models",
                                 json=body.model_dump(mode="json"))
        return BaseModelOut.model_validate(response.json()), response.status_code == 201

    def get_base(self, name: str, revision: str | None = None) -> BaseModelOut:
        params = {"revision": revision} if revision else None
        response = self._request("GET", f"/api/v1/base-models/{name}", params=params)
        return BaseModelOut.model_validate(response.json())

    def list_bases(self) -> list[BaseModelOut]:
        response = self._request("GET", "/api/v1/base-models")
        return [BaseModelOut.model_validate(b) for b in response.json()]

    def compat_verdict(self, name: str, version: int | None, *, base: str,
                       base_revision: str | None = None) -> VerdictOut:
        which = "latest" if version is None else str(version)
        params = {"base": base, **({"base_revision": base_revision} if base_revision else {})}
        response = self._request("GET", f"/api/v1/adapters/{name}/versions/{which}/compat",
                                 params=params)
        return VerdictOut.model_validate(response.json())

    def compatible_versions(self, *, base: str,
                            base_revision: str | None = None) -> list[CompatibleVersionOut]:
        params = {"base": base, **({"base_revision": base_revision} if base_revision else {})}
        response = self._request("GET", "/api/v1/compat", params=params)
        return [CompatibleVersionOut.model_validate(v) for v in response.json()]

    def compatible_bases(self, name: str, version: int | None) -> list[CompatibleBaseOut]:
        which = "latest" if version is None else str(version)
        response = self._request("GET", f"/api/v1/adapters/{name}/versions/{which}/compat")
        return [CompatibleBaseOut.model_validate(b) for b in response.json()]

    def create_export(self, body: CreateExportIn) -> tuple[ExportOut, bool]:
        response = self._request("POST", "/api/v1/exports", json=body.model_dump(mode="json"))
        return ExportOut.model_validate(response.json()), response.status_code == 201

    def list_exports(self, name: str, version: int, *, base: str | None = None,
                     base_revision: str | None = None,
                     dtype: str | None = None) -> list[ExportOut]:
        params = {k: v for k, v in
                  {"base": base, "base_revision": base_revision, "dtype": dtype}.items() if v}
        response = self._request("GET", f"/api/v1/adapters/{name}/versions/{version}/exports",
                                 params=params)
        return [ExportOut.model_validate(e) for e in response.json()]

    def export_provenance(self) -> str | None:
        # Without a token the server records an upload as "anonymous", which is anyone: not an
        # identity to trust. With one, the server records "token:NAME": ask it which NAME.
        if self._token is None:
            return None
        try:
            return f"{TOKEN_PROVENANCE}{self.whoami().name}"
        except (errors.Unauthenticated, errors.NotFound):
            # An invalid token on a server with auth off (recorded as anonymous), or a server
            # from before tokens.
            return None

    def whoami(self) -> WhoamiOut:
        """The token this client sends, as the server knows it (asked once per client).

        Raises:
            Unauthenticated: no token, or one the server does not accept.
        """
        if self._whoami is None:
            response = self._request("GET", "/api/v1/auth/whoami")
            self._whoami = WhoamiOut.model_validate(response.json())
        return self._whoami

    def create_token(self, body: CreateTokenIn) -> CreatedTokenOut:
        response = self._request("POST", "/api/v1/tokens", json=body.model_dump(mode="json"))
        return CreatedTokenOut.model_validate(response.json())

    def list_tokens(self) -> list[TokenOut]:
        return [TokenOut.model_validate(t) for t in self._request("GET", "/api/v1/tokens").json()]

    def revoke_token(self, name: str) -> TokenOut:
        validate_token_name(name)  # a '/' would reach another route
        response = self._request("POST", f"/api/v1/tokens/{name}/revoke")
        return TokenOut.model_validate(response.json())

    def audit(self, *, since: datetime | None = None, after: int = 0,
              limit: int = 1000) -> EventPageOut:
        params: dict[str, Any] = {"after": after, "limit": limit}
        if since is not None:
            params["since"] = since.isoformat()
        return EventPageOut.model_validate(self._request("GET", "/api/v1/audit",
                                                         params=params).json())

    def local_blob_path(self, digest: str) -> Path | None:
        """Blobs of a remote registry are never local files."""
        return None

    def read_blob_range(self, digest: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        try:
            response = self._request(
                "GET", f"/api/v1/blobs/{digest}",
                headers={"Range": f"bytes={offset}-{offset + length - 1}"},
            )
        except errors.RangeNotSatisfiable:
            return b""
        return response.content

    def record_scores(self, name: str, version: int, body: RecordScoresIn) -> list[ScoreOut]:
        for metric, value in body.scores.items():
            check_metric(metric, value)  # NaN and infinity cannot even be sent as JSON
        response = self._request("POST", f"/api/v1/adapters/{name}/versions/{version}/evals",
                                 json=body.model_dump(mode="json"))
        return [ScoreOut.model_validate(s) for s in response.json()]

    def list_events(self, *, after: int = 0, limit: int = 100,
                    types: tuple[str, ...] = (), adapter: str | None = None) -> EventPageOut:
        params: dict[str, Any] = {"after": after, "limit": limit}
        if types:
            params["type"] = list(types)
        if adapter is not None:
            params["adapter"] = adapter
        response = self._request("GET", "/api/v1/events", params=params)
        return EventPageOut.model_validate(response.json())

    # An alias goes into the URL path: checked here so a malformed one (a '/') gets the same
    # InvalidAlias as from the embedded registry, not a route that does not exist.

    def resolve_alias(self, name: str, alias: str) -> VersionOut:
        validate_alias(alias)
        response = self._request("GET", f"/api/v1/adapters/{name}/aliases/{alias}")
        return VersionOut.model_validate(response.json())

    def list_aliases(self, name: str) -> list[AliasOut]:
        response = self._request("GET", f"/api/v1/adapters/{name}/aliases")
        return [AliasOut.model_validate(a) for a in response.json()]

    def promote(self, name: str, alias: str, body: PromoteIn) -> PromoteOut:
        validate_alias(alias)
        response = self._request("PUT", f"/api/v1/adapters/{name}/aliases/{alias}",
                                 json=body.model_dump(mode="json"))
        return PromoteOut.model_validate(response.json())

    def rollback(self, name: str, alias: str, body: RollbackIn) -> RollbackOut:
        validate_alias(alias)
        response = self._request("POST", f"/api/v1/adapters/{name}/aliases/{alias}/rollback",
                                 json=body.model_dump(mode="json"))
        return RollbackOut.model_validate(response.json())

    def delete_alias(self, name: str, alias: str, body: AliasChangeIn) -> AliasDeletedOut:
        validate_alias(alias)
        response = self._request("DELETE", f"/api/v1/adapters/{name}/aliases/{alias}",
                                 json=body.model_dump(mode="json"))
        return AliasDeletedOut.model_validate(response.json())

    def history(self, name: str, *, alias: str | None = None,
                limit: int | None = None) -> list[HistoryEntryOut]:
        params: dict[str, Any] = {}
        if alias is not None:
            params["alias"] = alias
        if limit is not None:
            params["limit"] = limit
        response = self._request("GET", f"/api/v1/adapters/{name}/history", params=params)
        return [HistoryEntryOut.model_validate(e) for e in response.json()]

    def archive(self, name: str, version: int, body: AliasChangeIn) -> VersionOut:
        response = self._request("POST", f"/api/v1/adapters/{name}/versions/{version}/archive",
                                 json=body.model_dump(mode="json"))
        return VersionOut.model_validate(response.json())

    def _policy_path(self, name: str | None, alias: str) -> str:
        validate_alias(alias)
        if name is None:
            return f"/api/v1/policies/{alias}"
        return f"/api/v1/adapters/{name}/policies/{alias}"

    def set_policy(self, name: str | None, alias: str, body: PolicyIn) -> PolicyOut:
        response = self._request("PUT", self._policy_path(name, alias),
                                 json=body.model_dump(mode="json"))
        return PolicyOut.model_validate(response.json())

    def delete_policy(self, name: str | None, alias: str) -> None:
        self._request("DELETE", self._policy_path(name, alias))

    def list_policies(self, name: str | None) -> list[PolicyOut]:
        path = "/api/v1/policies" if name is None else f"/api/v1/adapters/{name}/policies"
        response = self._request("GET", path)
        return [PolicyOut.model_validate(p) for p in response.json()]
    def base_scores(self, base: str, revision: str | None = None) -> list[ScoreOut]:
        params = {"revision": revision} if revision else None
        response = self._request("GET", f"/api/v1/base-models/{base}/evals", params=params)
        return [ScoreOut.model_validate(s) for s in response.json()]

    def create_suite(self, body: CreateSuiteIn) -> tuple[SuiteOut, bool]:
        response = self._request("POST", "/api/v1/suites", json=body.model_dump(mode="json"))
        return SuiteOut.model_validate(response.json()), response.status_code == 201

    def get_suite(self, name: str, version: int | None = None) -> SuiteOut:
        params = {"version": version} if version is not None else None
        response = self._request("GET", f"/api/v1/suites/{name}", params=params)
        return SuiteOut.model_validate(response.json())

    def list_suites(self) -> list[SuiteOut]:
        response = self._request("GET", "/api/v1/suites")
        return [SuiteOut.model_validate(s) for s in response.json()]

    def attach_suite(self, suite: str, body: AttachSuiteIn) -> AttachmentOut:
        response = self._request("POST", f"/api/v1/suites/{suite}/attachments",
                                 json=body.model_dump(mode="json"))
        return AttachmentOut.model_validate(response.json())

    def validate(self, name: str, version: int, body: ValidateIn) -> JobOut:
        response = self._request("POST", f"/api/v1/adapters/{name}/versions/{version}/validate",
                                 json=body.model_dump(mode="json"))
        return JobOut.model_validate(response.json())

    def list_jobs(self, *, status: str | None = None, limit: int = 100) -> list[JobOut]:
        params: dict[str, Any] = {"limit": limit}
        if status is not None:
            params["status"] = status
        response = self._request("GET", "/api/v1/jobs", params=params)
        return [JobOut.model_validate(j) for j in response.json()]

    def get_job(self, job_id: int) -> JobOut:
        return JobOut.model_validate(self._request("GET", f"/api/v1/jobs/{job_id}").json())

    def cancel_job(self, job_id: int) -> JobOut:
        return JobOut.model_validate(
            self._request("POST", f"/api/v1/jobs/{job_id}/cancel").json())

    def retry_job(self, job_id: int) -> JobOut:
        return JobOut.model_validate(
            self._request("POST", f"/api/v1/jobs/{job_id}/retry").json())

    def claim_job(self, worker: str, *,
                  kinds: tuple[str, ...] = ("validate",)) -> ClaimedJobOut | None:
        body = ClaimIn(worker=worker, kinds=list(kinds))
        response = self._request("POST", "/api/v1/jobs/claim", json=body.model_dump(mode="json"))
        if response.status_code == 204:
            return None
        return ClaimedJobOut.model_validate(response.json())

    def heartbeat_job(self, job_id: int, *, worker: str, attempt: int) -> LeaseOut:
        body = LeaseIn(worker=worker, attempt=attempt)
        response = self._request("POST", f"/api/v1/jobs/{job_id}/heartbeat",
                                 json=body.model_dump(mode="json"))
        return LeaseOut.model_validate(response.json())

    def complete_job(self, job_id: int, *, worker: str, attempt: int,
                     report: dict[str, Any]) -> JobOut:
        body = CompleteJobIn(worker=worker, attempt=attempt, report=report)
        response = self._request("POST", f"/api/v1/jobs/{job_id}/complete",
                                 json=body.model_dump(mode="json"))
        return JobOut.model_validate(response.json())

    def fail_job(self, job_id: int, *, worker: str, attempt: int, error: str,
                 result: dict[str, Any] | None = None) -> JobOut:
        body = FailJobIn(worker=worker, attempt=attempt, error=error, result=result)
        response = self._request("POST", f"/api/v1/jobs/{job_id}/fail",
                                 json=body.model_dump(mode="json"))
        return JobOut.model_validate(response.json())

    def release_job(self, job_id: int, *, worker: str, attempt: int) -> JobOut:
        body = LeaseIn(worker=worker, attempt=attempt)
        response = self._request("POST", f"/api/v1/jobs/{job_id}/release",
                                 json=body.model_dump(mode="json"))
        return JobOut.model_validate(response.json())

    def add_webhook(self, body: CreateWebhookIn) -> CreatedWebhookOut:
        response = self._request("POST", "/api/v1/webhooks", json=body.model_dump(mode="json"))
        return CreatedWebhookOut.model_validate(response.json())

    def list_webhooks(self) -> list[WebhookOut]:
        response = self._request("GET", "/api/v1/webhooks")
        return [WebhookOut.model_validate(w) for w in response.json()]

    def remove_webhook(self, webhook_id: int) -> WebhookOut:
        response = self._request("DELETE", f"/api/v1/webhooks/{int(webhook_id)}")
        return WebhookOut.model_validate(response.json())

    def test_webhook(self, webhook_id: int) -> DeliveryOut:
        response = self._request("POST", f"/api/v1/webhooks/{int(webhook_id)}/test")
        return DeliveryOut.model_validate(response.json())

    def webhook_deliveries(self, webhook_id: int, *, limit: int = 100) -> list[DeliveryOut]:
        response = self._request("GET", f"/api/v1/webhooks/{int(webhook_id)}/deliveries",
                                 params={"limit": limit})
        return [DeliveryOut.model_validate(d) for d in response.json()]

    def close(self) -> None:
        self._http.close()
