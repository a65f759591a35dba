"""Referenced base-model sources, parsed without reading them: hf:// and s3:// URIs, revisions,
and the allowlist (REGISTRY_BASE_SOURCES) a server checks before it reads anything.

Pure (no network): `registry.config` validates the allowlist at start-up with it, and
`registry.base_models.sources` opens what it parses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from registry.errors import InvalidInput, SourceNotAllowed
from registry.formats.adapter import normalize_path

HF_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
S3_RE = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?$")
# A revision is a label (local, S3) or a branch, tag or commit (hf://). It becomes part of
# Hugging Face cache paths (refs/<revision>), so nothing path-like: no "/", no "..", no
# leading "." or "-". HF pull-request refs ("refs/pr/1") are therefore not accepted.
REVISION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


@dataclass(frozen=True)
class HfRef:
    repo_id: str
    revision: str | None


@dataclass(frozen=True)
class S3Ref:
    bucket: str
    prefix: str


def check_revision(revision: str) -> str:
    """Refuse a revision that is not a plain name (see REVISION_RE).

    Raises:
        InvalidInput: e.g. "../x", "a/b", ".hidden", an empty string.
    """
    if not REVISION_RE.match(revision) or ".." in revision:
        raise InvalidInput(
            f"invalid revision {revision[:80]!r}: use letters, digits, '.', '_' and '-' "
            "(a branch, tag, commit or label; at most 200 characters, no '/' or '..')"
        )
    return revision


def parse_remote(source: str) -> HfRef | S3Ref:
    """Parse ``hf://org/repo[@revision]`` or ``s3://bucket/prefix``.

    Raises:
        InvalidInput: anything else, a malformed repository / bucket name, or a path-like
            revision.
    """
    if source.startswith("hf://"):
        rest = source[len("hf://"):]
        repo, _, revision = rest.partition("@")
        if not HF_REPO_RE.match(repo) or ".." in repo or (revision == "" and "@" in rest):
            raise InvalidInput(f"invalid Hugging Face source {source!r}: use hf://org/repo[@rev]")
        if revision:
            check_revision(revision)
        return HfRef(repo, revision or None)
    match = S3_RE.match(source)
    if match:
        prefix = (match.group(2) or "").strip("/")
        if prefix:
            normalize_path(prefix)
        return S3Ref(match.group(1), prefix)
    raise InvalidInput(
        f"invalid base model source {source!r}: use a local directory, hf://org/repo[@rev] "
        "or s3://bucket/prefix"
    )


@dataclass(frozen=True)
class SourceAllowlist:
    """Referenced sources a server may read on a client's behalf, with its own credentials.

    Entries (comma-separated in REGISTRY_BASE_SOURCES):

    - ``s3://bucket/`` or ``s3://bucket/some/prefix``: that bucket, under that key prefix,
      matched on whole path segments (``s3://models/llama`` allows ``s3://models/llama/7b``,
      not ``s3://models/llama-private``);
    - ``hf://org/``: every repository of that owner; ``hf://org/repo`` (no trailing slash):
      that repository only. Hub ids are case-insensitive, and so is the match.

    No entry (the default) allows no referenced source: base models are uploaded. The embedded
    CLI reads sources with the user's own credentials and allows every source
    (`SourceAllowlist.everything`).
    """

    s3: tuple[S3Ref, ...] = ()
    hf_owners: tuple[str, ...] = ()
    hf_repos: tuple[str, ...] = ()
    allow_all: bool = False

    @classmethod
    def everything(cls) -> SourceAllowlist:
        """Every source: for a process reading with its own user's credentials."""
        return cls(allow_all=True)

    @classmethod
    def parse(cls, text: str) -> SourceAllowlist:
        """Parse the comma-separated entries of REGISTRY_BASE_SOURCES.

        Raises:
            InvalidInput: an entry that is not an s3:// or hf:// prefix as described above.
        """
        s3: list[S3Ref] = []
        owners: list[str] = []
        repos: list[str] = []
        for raw in text.split(","):
            entry = raw.strip()
            if not entry:
                continue
            if entry.startswith("hf://"):
                name = entry[len("hf://"):]
                owner = name[:-1] if name.endswith("/") else None
                if "@" in name or not HF_REPO_RE.match(owner if owner is not None else name) or (
                    owner is not None and "/" in owner
                ) or ".." in name:
                    raise InvalidInput(
                        f"invalid REGISTRY_BASE_SOURCES entry {entry!r}: use hf://org/ (every "
                        "repository of org) or hf://org/repo"
                    )
                (owners if owner is not None else repos).append((owner or name).lower())
            elif entry.startswith("s3://"):
                try:
                    ref = parse_remote(entry)
                except InvalidInput:
                    raise InvalidInput(
                        f"invalid REGISTRY_BASE_SOURCES entry {entry!r}: use s3://bucket/ or "
                        "s3://bucket/prefix"
                    ) from None
                assert isinstance(ref, S3Ref)
                s3.append(ref)
            else:
                raise InvalidInput(
                    f"invalid REGISTRY_BASE_SOURCES entry {entry!r}: entries start with s3:// "
                    "or hf://"
                )
        return cls(s3=tuple(s3), hf_owners=tuple(owners), hf_repos=tuple(repos))

    def allows(self, ref: HfRef | S3Ref) -> bool:
        if self.allow_all:
            return True
        if isinstance(ref, HfRef):
            repo = ref.repo_id.lower()
            owner = repo.split("/")[0] if "/" in repo else None
            return repo in self.hf_repos or (owner is not None and owner in self.hf_owners)
        return any(
            ref.bucket == e.bucket
            and (not e.prefix or ref.prefix == e.prefix or ref.prefix.startswith(e.prefix + "/"))
            for e in self.s3
        )

    def check(self, source: str) -> HfRef | S3Ref:
        """Parse ``source`` and refuse it unless allowed, before anything is read.

        The message is the same whether or not the source exists.

        Raises:
            InvalidInput: a malformed source.
            SourceNotAllowed: a well-formed source outside the allowlist.
        """
        ref = parse_remote(source)
        if not self.allows(ref):
            raise SourceNotAllowed(
                f"base model source {source!r} is not allowed on this registry: the server reads "
                "referenced sources only within REGISTRY_BASE_SOURCES; register the checkpoint "
                "from a local directory (uploaded) instead, or ask an administrator to allow it"
            )
        return ref
