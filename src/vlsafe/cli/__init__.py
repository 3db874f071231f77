"""The ``vlsafe`` command line: a thin click front end over the library.

Every subcommand parses its options and makes one call of a documented public function taking a config object,
so the Python API and the CLI never disagree. Options that are config fields are generated from the config models
(:func:`config_options`, :func:`config_from_flags`), so each option, its help and its default are declared once.
Commands live in one module per command group and are found through the command registry of
:mod:`vlsafe.cli.group`.
"""

from vlsafe.cli.group import COMMANDS, echo_json, main, progress_enabled
from vlsafe.cli.options import ConfigFlags, config_from_flags, config_options

__all__ = [
    "COMMANDS",
    "ConfigFlags",
    "config_from_flags",
    "config_options",
    "echo_json",
    "main",
    "progress_enabled",
]
