"""Adapter commands: push, pull, list, show, lineage."""

from __future__ import annotations

from pathlib import Path

import click

from cli.output import CliState, fail, pass_state
from registry.adapters.schemas import ExportSummaryOut, LineageNodeOut, LineageOut, VersionOut
from registry.errors import InvalidInput
from registry.refs import parse_ref


def _parse_meta(pairs: tuple[str, ...]) -> dict[str, str]:
    meta: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"invalid --meta {pair!r}: expected key=value")
        meta[key] = value
    return meta


@click.command()
@click.argument("name")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--base", "base_model", default=None, help="Base model name.")
@click.option("--parent", default=None,
              help="Parent version, NAME:VERSION or NAME@ALIAS (lineage records the version).")
@click.option("--meta", "meta", multiple=True, metavar="KEY=VALUE",
              help="Training metadata; repeatable.")
@click.option("--idempotency-key", default=None,
              help="Retry-safe key: the same key with the same content returns that version.")
@click.option("--description", default=None, help="Adapter description (first push).")
@pass_state
def push(state: CliState, name: str, directory: Path, base_model: str | None,
         parent: str | None, meta: tuple[str, ...], idempotency_key: str | None,
         description: str | None) -> None:
    """Register a new version of NAME from a PEFT adapter DIRECTORY."""
    from registry.clientside.transfer import push as do_push

    metadata = _parse_meta(meta)
    result = do_push(
        state.backend(), name=name, directory=directory, settings=state.settings(),
        base_model=base_model, parent=parent, metadata=metadata,
        idempotency_key=idempotency_key, description=description, progress=state.progress,
    )
    v = result.version
    data = {"name": v.name, "version": v.version, "status": v.status, "created": result.created,
            "uploaded": result.uploaded, "skipped": result.skipped, "ref": v.ref}

    verdict = v.compatibility
    if verdict is not None and not verdict.compatible:
        reasons = "; ".join(r.message for r in verdict.reasons[:3])
        click.echo(f"warning: {v.ref} is not compatible with base {v.base_model}: {reasons}",
                   err=True)
    data["compatible"] = verdict.compatible if verdict is not None else None

    def human() -> None:
        what = "pushed" if result.created else "already registered (idempotency key)"
        click.echo(f"{what} {v.ref} [{v.status}] {v.peft_type} r={v.r} "
                   f"({len(result.uploaded)} file(s) uploaded, "
                   f"{len(result.skipped)} already stored)")

    state.emit(data, human)


@click.command()
@click.argument("ref")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--export-base", default=None,
              help="Pull the recorded merged export for this base model instead.")
@click.option("--export-dtype", default=None, type=click.Choice(["float32", "float16", "bfloat16"]),
              help="With --export-base: which export (default: the only or first one).")
@click.option("--force", is_flag=True,
              help="Replace a non-empty DIRECTORY (its old contents are removed).")
@click.option("--if-changed", is_flag=True,
              help="Do nothing (exit 0) when DIRECTORY already holds the version REF names; "
                   "replace a DIRECTORY holding another pulled version in one swap.")
@pass_state
def pull(state: CliState, ref: str, directory: Path, export_base: str | None,
         export_dtype: str | None, force: bool, if_changed: bool) -> None:
    """Write the files of REF (NAME, NAME:VERSION or NAME@ALIAS) into DIRECTORY, verified.

    DIRECTORY must not exist or be empty, unless --force (or --if-changed and DIRECTORY holds
    an earlier pull). Files are downloaded into a hidden staging directory and installed only
    once every one matched its digest: a failed pull leaves DIRECTORY as it was. A manifest,
    .adapter-registry.json, records the version and each file's digest and size.
    """
    from registry.clientside.transfer import pull as do_pull
    from registry.clientside.transfer import pull_if_changed

    if export_base is not None:
        if if_changed:
            raise InvalidInput("--if-changed pulls a version's files, not an export: drop "
                               "one of --if-changed and --export-base")
        _pull_export(state, ref, directory, export_base, export_dtype, force)
        return

    if if_changed:
        result = pull_if_changed(state.backend(), ref=ref, directory=directory, force=force,
                                 progress=state.progress)
        version, written, changed = result.version, result.files, result.changed
    else:
        version, written = do_pull(state.backend(), ref=ref, directory=directory, force=force,
                                   progress=state.progress)
        changed = True

    def human() -> None:
        if changed:
            click.echo(f"pulled {version.ref} into {directory} ({len(written)} file(s))")
        else:
            click.echo(f"{directory} already holds {version.ref}: unchanged")

    state.emit(
        {"name": version.name, "version": version.version, "files": written,
         "directory": str(directory), "changed": changed},
        human,
    )


def _pull_export(state: CliState, ref: str, directory: Path, base: str,
                 dtype: str | None, force: bool) -> None:
    from registry.clientside.export import pull_export, trusted_because
    from registry.clientside.transfer import resolve
    from registry.errors import NotFound

    backend = state.backend()
    version = resolve(backend, ref)
    found = backend.list_exports(version.name, version.version, base=base, dtype=dtype)
    if not found:
        raise NotFound(f"no recorded export of {version.ref} for base {base!r}"
                       f"{' in ' + dtype if dtype else ''}; create one with: adapter-registry "
                       f"export {version.ref} --base {base} --out DIR --upload")
    # Asked for by name, any recorded export may be pulled (like any pushed version); a trusted
    # one is preferred, and who recorded it is printed either way.
    own = backend.export_provenance()
    chosen = next((e for e in found if trusted_because(e, own) is not None), found[0])
    files = pull_export(backend, chosen, directory, force=force, progress=state.progress)
    state.emit(
        {"name": version.name, "version": version.version, "files": [f["path"] for f in files],
         "directory": str(directory),
         "export": {"base": chosen.base, "dtype": chosen.dtype,
                    "provenance": chosen.provenance, "created_by": chosen.created_by}},
        lambda: click.echo(f"pulled the {chosen.dtype} export of {version.ref} on {base} "
                           f"(recorded by {chosen.provenance}) into {directory} "
                           f"({len(files)} file(s))"),
    )


@click.command("list")
@click.argument("name", required=False)
@pass_state
def list_cmd(state: CliState, name: str | None) -> None:
    """List adapters, or the versions of NAME."""
    backend = state.backend()
    if name is None:
        adapters = backend.list_adapters()

        def human_adapters() -> None:
            if not adapters:
                click.echo("no adapters")
            for a in adapters:
                aliases = " ".join(f"{k}={v}" for k, v in sorted(a.aliases.items()))
                click.echo(f"{a.name}\tlatest={a.latest_version}\tversions={a.version_count}"
                           f"\t{a.task_type or '-'}" + (f"\t{aliases}" if aliases else ""))

        state.emit([a.model_dump(mode="json") for a in adapters], human_adapters)
        return
    parse_ref(name)
    versions = backend.list_versions(name)

    def human_versions() -> None:
        for v in versions:
            aliases = f"\t@{',@'.join(v.aliases)}" if v.aliases else ""
            click.echo(f"{v.ref}\t{v.status}\t{v.peft_type}\tr={v.r}\t"
                       f"base={v.base_model or '-'}\t{v.created_at:%Y-%m-%d %H:%M}{aliases}")

    state.emit([v.model_dump(mode="json") for v in versions], human_versions)


def _describe(v: VersionOut) -> None:
    click.echo(f"{v.ref}  [{v.status}]")
    if v.aliases:
        click.echo(f"  aliases:      {', '.join(f'{v.name}@{a}' for a in v.aliases)}")
    click.echo(f"  peft_type:    {v.peft_type}  task: {v.task_type or '-'}  r={v.r} "
               f"alpha={v.lora_alpha}")
    click.echo(f"  targets:      {v.target_modules}")
    click.echo(f"  base model:   {v.base_model or '-'} (declared: {v.declared_base_model or '-'})")
    if v.parent:
        click.echo(f"  parent:       {v.parent.name}:{v.parent.version}")
    for k, val in sorted(v.metadata.items()):
        click.echo(f"  meta {k}: {val}")
    if v.git_commit or v.ci_run_url:
        click.echo(f"  provenance:   {v.git_commit or '-'} {v.ci_run_url or ''}")
    click.echo(f"  created:      {v.created_at:%Y-%m-%d %H:%M:%S} by {v.created_by or '-'}")
    click.echo(f"  files ({v.total_size} bytes, {v.tensor_count} tensors):")
    for f in v.files:
        click.echo(f"    {f.path}\t{f.size}\t{f.digest}")
    if v.exports:
        click.echo("  exports (merged checkpoints):")
        for e in v.exports:
            click.echo(f"    {_export_line(e)}")
    if v.validation is not None:
        last = v.validation
        where = f" on {last.device}" if last.device else ""
        click.echo(f"  validation:   job {last.job} {last.verdict or last.status}{where} "
                   f"(base {last.base})")
        for reason in last.reasons:
            click.echo(f"    reason: {reason}")
    if v.scores:
        click.echo("  scores:")
        for s in v.scores:
            click.echo(f"    {s.suite}.{s.metric}\t{s.value:.6g}\tbase={s.base or '-'}\t"
                       f"source={s.source}")


def _export_line(e: ExportSummaryOut) -> str:
    return f"{e.base}@{e.base_revision}\t{e.dtype}\t{e.total_size} bytes"


@click.command()
@click.argument("ref")
@pass_state
def show(state: CliState, ref: str) -> None:
    """Show one version: REF is NAME (latest), NAME:VERSION or NAME@ALIAS."""
    from registry.clientside.transfer import resolve

    version = resolve(state.backend(), ref)
    state.emit(version.model_dump(mode="json"), lambda: _describe(version))


def _lineage_line(node: LineageNodeOut, relation: str) -> None:
    base = f"  base={node.base_model}" if node.base_model else ""
    click.echo(f"{'  ' * node.depth}{node.ref}  [{node.status}]  {node.peft_type}{base}  "
               f"{relation}  {node.created_at:%Y-%m-%d %H:%M}")
    for e in node.exports:
        click.echo(f"{'  ' * node.depth}  export: {_export_line(e)}")


def _describe_lineage(lin: LineageOut) -> None:
    click.echo("ancestors:" if lin.ancestors else "ancestors: none (a root version)")
    for node in reversed(lin.ancestors):  # the root first, down to the parent
        _lineage_line(node.model_copy(update={"depth": 1}),
                      "parent" if node.depth == 1 else f"{node.depth} generations up")
    click.echo("version:")
    _lineage_line(lin.version.model_copy(update={"depth": 1}), "(this one)")
    click.echo("descendants:" if lin.descendants else "descendants: none")
    # Listed breadth-first; printed as a tree: each version under its parent.
    children: dict[str, list[LineageNodeOut]] = {}
    for node in lin.descendants:
        if node.parent is not None:
            children.setdefault(f"{node.parent.name}:{node.parent.version}", []).append(node)

    stack = list(reversed(children.get(lin.ref, [])))
    while stack:  # depth-first, without recursion (a chain may be 1,000 versions long)
        node = stack.pop()
        assert node.parent is not None
        _lineage_line(node, f"child of {node.parent.name}:{node.parent.version}")
        stack.extend(reversed(children.get(node.ref, [])))
    if lin.truncated:
        click.echo(f"(truncated: more versions than the {len(lin.descendants)} listed)")


@click.command()
@click.argument("ref")
@pass_state
def lineage(state: CliState, ref: str) -> None:
    """Where REF comes from (its parents) and what came of it (versions pushed with it, or
    one of them, as --parent, in any adapter), with every merged export of each."""
    from registry.clientside.transfer import resolve

    backend = state.backend()
    version = resolve(backend, ref)
    result = backend.lineage(version.name, version.version)
    state.emit(result.model_dump(mode="json"), lambda: _describe_lineage(result))
