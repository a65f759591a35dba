"""`adapter-registry export`: fold an adapter into its base model, streaming shard by shard."""

from __future__ import annotations

import re
from pathlib import Path

import click

from cli.output import CliState, fail, pass_state
from registry.exports.schemas import DTYPES

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str) -> int:
    """``5GB``, ``500MiB``, ``20KB`` or plain bytes."""
    match = _SIZE.match(text.strip())
    unit = (match.group(2) or "").upper() if match else ""
    if not match or unit not in _UNITS:
        fail(f"invalid size {text!r}: use e.g. 5GB, 500MiB or a number of bytes")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        fail(f"invalid size {text!r}: must be positive")
    return value


@click.command()
@click.argument("ref")
@click.option("--base", "base_name", required=True, help="Base model to merge into.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Output directory (must not exist or be empty, unless --force).")
@click.option("--dtype", type=click.Choice(DTYPES), default=None,
              help="Output dtype (default: the base's dtype). Merges compute in float32.")
@click.option("--max-shard-size", default="5GB", show_default=True,
              help="Largest output shard.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--upload", is_flag=True,
              help="Store the merged files in the registry and record the export (reused when "
                   "the same version, base and dtype are exported again by someone who trusts "
                   "its uploader: the same token, or the embedded registry itself).")
@click.option("--force", is_flag=True, help="Replace a non-empty output directory.")
@pass_state
def export(state: CliState, ref: str, base_name: str, out: Path, dtype: str | None,
           max_shard_size: str, device: str, upload: bool, force: bool) -> None:
    """Write a merged, HF-loadable checkpoint of REF folded into base model --base."""
    from registry.clientside.export import export as run_export

    result = run_export(
        state.backend(), ref=ref, base=base_name, out=out, settings=state.settings(),
        dtype=dtype, max_shard_bytes=parse_size(max_shard_size), device=device, upload=upload,
        force=force, progress=state.progress,
    )
    data = {"out": str(result.out), "files": result.files, "dtype": result.dtype,
            "reused": result.reused, "reused_export": result.reused_json(),
            "untrusted_exports": result.untrusted, "uploaded": result.uploaded,
            "merged_modules": result.merged_modules, "shards": result.shards}

    def human() -> None:
        if result.reused and result.export is not None:
            e = result.export
            how = (f"reused the export recorded by {e.provenance} at "
                   f"{e.created_at:%Y-%m-%d %H:%M:%S} ({result.trusted_because})")
        else:
            how = f"merged {result.merged_modules} module(s) into {result.shards} shard(s)"
        click.echo(f"exported {ref} on {base_name} ({result.dtype}) to {result.out}: {how}")
        if result.untrusted:
            click.echo(f"not reused: recorded export(s) from {', '.join(result.untrusted)} "
                       "(not a provenance you trust)")
        if upload and not result.reused:
            click.echo(f"recorded the export ({len(result.uploaded)} file(s) uploaded)")

    state.emit(data, human)
