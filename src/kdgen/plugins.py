"""The user's own code: the modules a config's ``imports`` names.

They are imported before a run's model and data are built (by :mod:`kdgen.build`, so in
``kdgen train``, every sweep run, eval, transfer and the report alike), where they register
models and data sets through the public decorators :func:`kdgen.register_model` and
:func:`kdgen.register_dataset`. Importing a module runs its code, as running a script does.
A run records each module's file and its SHA-256 (:func:`module_records`).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdgen.errors import ConfigError, describe
from kdgen.runs import file_sha256


def import_modules(names: Sequence[str]) -> None:
    """Import each module of ``names`` (a module already imported is not run again); one
    that fails is refused with a ConfigError naming it and its error's first line."""
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:  # whatever the user's module raises while it runs
            hint = " (is its folder on PYTHONPATH?)" if isinstance(error, ImportError) else ""
            raise ConfigError(f"imports: cannot import '{name}': {describe(error)}{hint}") from None


def module_records(names: Sequence[str]) -> list[dict[str, Any]]:
    """What ran: each imported module's name, file and the SHA-256 of that file (None for
    a module without a file, such as a namespace package)."""
    import_modules(names)
    return [_record(name) for name in names]


def _record(name: str) -> dict[str, Any]:
    file = getattr(sys.modules[name], "__file__", None)
    if not file or not Path(file).is_file():
        return {"module": name, "file": None, "sha256": None}
    return {"module": name, "file": file, "sha256": file_sha256(Path(file))}
