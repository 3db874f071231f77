"""The ``vlsafe`` click group: global options, error handling and the command registry.

Commands are registered by name in :data:`COMMANDS` as ``"package.module:command"`` and imported only when
they run (or when ``--help`` lists them). The library registers its own commands below, one module per command
group; other packages add theirs through the ``vlsafe.cli`` entry-point group (the model organism adds ``demo``
and ``organism``), so both reach the CLI through the same registry. Command options that are config fields are
generated from the config models by :mod:`vlsafe.cli.options`.

A ``VlsafeError`` (bad config or input, a model that does not load, an output that cannot be written), a click
usage error (a bad flag value, a missing option) and an ``OSError`` (a disk that is full, a file that cannot be
read or written) end the command with one ``error:`` line naming the file or value, and exit code 2.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import click

from vlsafe import __version__
from vlsafe.core.errors import VlsafeError
from vlsafe.core.registry import Registry

__all__ = ["COMMANDS", "echo_json", "main", "os_error_text", "progress_enabled"]

#: command name -> click command (lazy "module:attribute" entries; entry-point group ``vlsafe.cli``)
COMMANDS: Registry[click.Command] = Registry("command", entry_points="vlsafe.cli")
for _name, _target in (
    ("models", "vlsafe.cli.models:models_cmd"),
    ("tiny-model", "vlsafe.cli.models:tiny_model_cmd"),
    ("inspect", "vlsafe.cli.models:inspect_cmd"),
    ("tour", "vlsafe.cli.models:tour_cmd"),
    ("eval", "vlsafe.cli.evals:eval_cmd"),
    ("judge", "vlsafe.cli.evals:judge_cmd"),
    ("report", "vlsafe.cli.evals:report_cmd"),
    ("benchmarks", "vlsafe.cli.evals:benchmarks_cmd"),
    ("cmrm", "vlsafe.cli.cmrm:cmrm_group"),
    ("merge", "vlsafe.cli.merge:merge_cmd"),
    ("train", "vlsafe.cli.train:train_group"),
    ("analyze", "vlsafe.cli.analyze:analyze_group"),
):
    COMMANDS.register_lazy(_name, _target)


def echo_json(data: Any) -> None:
    """Print ``data`` as indented JSON (what commands print as their result)."""
    click.echo(json.dumps(data, indent=2, default=str))


def progress_enabled(ctx: click.Context) -> bool:
    """Whether a command shows progress bars (not under ``vlsafe --quiet``)."""
    return not (ctx.obj or {}).get("quiet")


class _Group(click.Group):
    """Commands come from :data:`COMMANDS`; a ``VlsafeError`` or usage error is one line and exit code 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return COMMANDS.names()

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return COMMANDS.get(cmd_name) if cmd_name in COMMANDS else None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VlsafeError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except click.UsageError as exc:
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            click.echo(f"error: {exc.format_message()}{where}", err=True)
            sys.exit(2)
        except OSError as exc:  # a file that cannot be read or written: disk full, permissions, a vanished folder
            click.echo(f"error: {os_error_text(exc)}", err=True)
            sys.exit(2)


def os_error_text(exc: OSError) -> str:
    """One line for an ``OSError``: the reason and the file(s) it names (``No space left on device: 'x.json'``)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    files = [repr(str(f)) for f in (exc.filename, exc.filename2) if f is not None]
    return f"{reason}: {' -> '.join(files)}" if files else f"{type(exc).__name__}: {reason}"


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="vlsafe")
@click.option("--quiet", "-q", is_flag=True, help="Only warnings and errors; no progress bars.")
@click.pass_context
def main(ctx: click.Context, quiet: bool) -> None:
    """vlsafe: measure, localise, repair and prove the safety of vision-language models."""
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"
    ctx.ensure_object(dict)
    ctx.obj["quiet"] = quiet
