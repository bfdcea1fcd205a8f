"""One way to read configuration from the environment, for every scope (bridge, fetcher, Spark consumer, ...).

Each scope keeps its own table `name -> (default, description)` (the README tables and Helm values are checked
against them); these two functions read a name against such a table. `<NAME>_FILE` wins over the variable, so
Kubernetes secret mounts work for any setting.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

Defaults = Mapping[str, tuple[str, str]]


def env(name: str, environ: Mapping[str, str] | None, defaults: Defaults) -> str:
    """`<name>_FILE` contents, else the variable, else the documented default (a variable set to "" counts as
    unset)."""
    environ = os.environ if environ is None else environ
    path = environ.get(f"{name}_FILE")
    if path:
        return Path(path).read_text().strip()
    value = environ.get(name)
    if value is not None and value != "":
        return value
    return defaults[name][0]


def optional_env(name: str, environ: Mapping[str, str] | None, defaults: Defaults) -> str:
    """Like `env`, but a variable set to "" stays "": how a feature with a non-empty default is switched off."""
    environ = os.environ if environ is None else environ
    if environ.get(f"{name}_FILE") or name not in environ:
        return env(name, environ, defaults)
    return environ[name].strip()


def reader(environ: Mapping[str, str] | None, defaults: Defaults) -> Callable[[str], str]:
    """`e = reader(environ, DEFAULTS)`, then `e(name)`: a scope's `from_env` reads every setting the same way."""
    return lambda name: env(name, environ, defaults)
