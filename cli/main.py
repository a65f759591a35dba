"""The `adapter-registry` command: global options, error handling, and the command groups."""

from __future__ import annotations

import sys
from typing import Any

import click
from pydantic import ValidationError

from cli import (
    adapters,
    base,
    compat,
    db,
    evals,
    export,
    gc,
    jobs,
    lifecycle,
    server,
    suites,
    tokens,
    validate,
    webhook,
    worker,
)
from cli.output import CliState, exit_code_for, fail
from registry import __version__, errors
from registry.clientside.process import exit_process


class RegistryGroup(click.Group):
    """Turns every failure into one line on stderr and a non-zero exit; never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errors.RegistryError as exc:
            fail(exc.detail, exit_code_for(exc))
        except ValidationError as exc:
            problem = exc.errors()[0]
            loc = ".".join(str(p) for p in problem.get("loc", ()))
            msg = problem.get("msg")
            fail(f"invalid input: {loc}: {msg}" if loc else str(msg))
        except OSError as exc:
            fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except Exception as exc:
            # SQLAlchemy is imported only by commands that open a database; checking for its
            # error here, lazily, keeps it out of the start-up of every other command.
            sa_exc = sys.modules.get("sqlalchemy.exc")
            if sa_exc is not None and isinstance(exc, sa_exc.OperationalError):
                reason = str(exc.orig).splitlines()[0] if exc.orig else str(exc)
                fail(f"database unavailable: {reason}", 5)
            raise


@click.group(cls=RegistryGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="REGISTRY_URL", default=None,
              help="Registry server URL. Without it, work on the embedded registry in "
                   "$REGISTRY_HOME.")
@click.option("--token", envvar="REGISTRY_TOKEN", default=None,
              help="API token (arg_…), sent as Authorization: Bearer.")
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON document.")
@click.version_option(__version__, prog_name="adapter-registry")
@click.pass_context
def cli(ctx: click.Context, url: str | None, token: str | None, as_json: bool) -> None:
    """Keep LLM fine-tuning adapters: base models, versions, compatibility, merged exports,
    aliases with gated promotion and rollback.

    Every command exits 0 on success and non-zero with one line on stderr otherwise (1 invalid
    input, 3 not found, 4 conflict, 5 unavailable, 6 a check said no, 7 not authorized).
    --json works before or after the command.
    """
    state = CliState(url=url, token=token, json=as_json)
    ctx.obj = state
    ctx.call_on_close(state.close)


cli.add_command(server.server)
cli.add_command(db.db)
cli.add_command(adapters.push)
cli.add_command(adapters.pull)
cli.add_command(adapters.list_cmd)
cli.add_command(adapters.show)
cli.add_command(adapters.lineage)
cli.add_command(gc.gc)
cli.add_command(base.base)
cli.add_command(compat.compat)
cli.add_command(export.export)
cli.add_command(evals.eval_group)
cli.add_command(evals.evals)
cli.add_command(lifecycle.promote)
cli.add_command(lifecycle.rollback)
cli.add_command(lifecycle.history)
cli.add_command(lifecycle.archive)
cli.add_command(lifecycle.alias_group)
cli.add_command(lifecycle.policy_group)
cli.add_command(suites.suite)
cli.add_command(validate.validate)
cli.add_command(jobs.jobs)
cli.add_command(worker.worker)
cli.add_command(tokens.token)
cli.add_command(tokens.audit)
cli.add_command(webhook.webhook)


def main() -> None:
    code = 0
    try:
        cli.main(prog_name="adapter-registry", standalone_mode=True)
    except SystemExit as exc:  # click ends every command this way
        if isinstance(exc.code, str):
            click.echo(exc.code, err=True)
            code = 1
        else:
            code = exc.code or 0
    except Exception as exc:  # the last line of defence: one line, never a traceback
        click.echo(f"error: internal error: {type(exc).__name__}: {exc}", err=True)
        code = 70
    exit_process(code)


if __name__ == "__main__":
    main()
