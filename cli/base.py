"""`adapter-registry base`: register, list and show base models."""

from __future__ import annotations

from pathlib import Path

import click

from cli.output import CliState, pass_state
from registry.base_models.schemas import BaseModelOut, RegisterBaseIn

REMOTE_SCHEMES = ("hf://", "s3://")


@click.group()
def base() -> None:
    """Base models adapters are checked against."""


@base.command()
@click.argument("name")
@click.argument("source")
@click.option("--revision", default=None,
              help="Revision label (local/S3) or the revision to resolve (hf://).")
@pass_state
def register(state: CliState, name: str, source: str, revision: str | None) -> None:
    """Register NAME from SOURCE: a local HF directory, hf://org/repo[@rev] or s3://bucket/prefix.

    A local directory is uploaded to the blob store (content-addressed: a checkpoint registered
    twice stores nothing new); hf:// and s3:// sources are referenced and read header-only.
    """
    backend = state.backend()
    if source.startswith(REMOTE_SCHEMES):
        model, created = backend.register_base(
            RegisterBaseIn(name=name, source=source, revision=revision)
        )
        uploaded: list[str] = []
    else:
        from registry.clientside.transfer import register_base_dir

        local = Path(source[len("file://"):] if source.startswith("file://") else source)
        model, created, uploaded = register_base_dir(
            backend, name=name, directory=local, settings=state.settings(), revision=revision,
            progress=state.progress,
        )
    state.emit(
        {"name": model.name, "revision": model.revision, "fingerprint": model.fingerprint,
         "created": created, "uploaded": uploaded, "source": model.source},
        lambda: click.echo(
            f"{'registered' if created else 'already registered'} base {model.name}@"
            f"{model.revision} ({model.model_type}, {model.tensor_count} tensors, "
            f"fingerprint {model.fingerprint[:19]}…)"
        ),
    )


@base.command("list")
@pass_state
def list_bases(state: CliState) -> None:
    """List registered base models (every revision)."""
    models = state.backend().list_bases()

    def human() -> None:
        if not models:
            click.echo("no base models")
        for m in models:
            click.echo(f"{m.name}@{m.revision}\t{m.model_type or '-'}\t{m.source}")

    state.emit([m.model_dump(mode="json", exclude={"config"}) for m in models], human)


def _describe(m: BaseModelOut) -> None:
    click.echo(f"{m.name}@{m.revision}")
    click.echo(f"  source:        {m.source}")
    click.echo(f"  architecture:  {', '.join(m.architectures) or '-'} ({m.model_type or '-'})")
    click.echo(f"  hidden/vocab/layers: {m.hidden_size}/{m.vocab_size}/{m.num_hidden_layers}"
               f"  tied embeddings: {m.tie_word_embeddings}")
    click.echo(f"  tensors:       {m.tensor_count} ({m.total_size} bytes)")
    click.echo(f"  fingerprint:   {m.fingerprint}")
    for f in m.files:
        click.echo(f"    {f.path}\t{f.size}\t{f.digest or f.etag or ''}")


@base.command()
@click.argument("name")
@click.option("--revision", default=None, help="Default: the latest registered revision.")
@pass_state
def show(state: CliState, name: str, revision: str | None) -> None:
    """Show one base model."""
    model = state.backend().get_base(name, revision)
    state.emit(model.model_dump(mode="json"), lambda: _describe(model))
