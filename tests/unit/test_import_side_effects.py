"""Importing vlsafe changes nothing outside vlsafe: no matplotlib backend switch, no csv field cap, no logging
configuration, no environment variables."""

from __future__ import annotations

import subprocess
import sys
import textwrap

_PROBE = textwrap.dedent(
    """
    import csv, importlib, logging, os, pkgutil, sys
    import matplotlib
    matplotlib.use("svg")
    env, limit = dict(os.environ), csv.field_size_limit()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    import vlsafe
    names = [m.name for m in pkgutil.walk_packages(vlsafe.__path__, "vlsafe.") if m.name != "vlsafe.__main__"]
    for name in names:
        importlib.import_module(name)
    assert len(names) > 50, names
    assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
    assert csv.field_size_limit() == limit, csv.field_size_limit()
    assert (list(root.handlers), root.level) == (handlers, level)
    changed = sorted(k for k in set(env) | set(os.environ) if env.get(k) != os.environ.get(k))
    assert not changed, changed
    print("ok", len(names))
    """
)


def test_importing_every_module_has_no_side_effects() -> None:
    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok")
