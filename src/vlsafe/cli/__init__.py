"""The ``vlsafe`` command line: a thin click front end over the library.

Every subcommand parses its options and makes one call of a documented public function, so the Python API and
the CLI never disagree. Commands live in one module per command group and are found through the command
registry of :mod:`vlsafe.cli.group`.
"""

from vlsafe.cli.group import COMMANDS, echo_json, main

__all__ = ["COMMANDS", "echo_json", "main"]
