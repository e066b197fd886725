"""Import hook for mutation runs: finds ``discord.ext.listening`` wherever mutmut put it.

mutmut copies ``src/`` to ``mutants/src/`` and puts that first on ``sys.path``. That is enough for
an ordinary package, not for ours: ``discord`` is discord.py's regular package, so Python looks for
``discord.ext.listening`` only under discord.py's own directory and never on ``sys.path``. This
finder answers for that one name by searching ``sys.path`` in order, so the mutated copy wins.

``python3 dev.py mutants`` installs it (and a ``.pth`` line importing it) into the mutation
run's own virtualenv only; the project's ``.venv`` never sees it.
"""

from __future__ import annotations

import sys
from importlib.machinery import ModuleSpec
from importlib.util import spec_from_file_location
from pathlib import Path

NAME = "discord.ext.listening"


class MutantsFinder:
    """Meta-path finder for :data:`NAME` that searches ``sys.path`` (first match wins)."""

    @classmethod
    def find_spec(cls, name: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if name != NAME:
            return None
        for entry in sys.path:
            package = Path(entry or ".") / "discord" / "ext" / "listening"
            init = package / "__init__.py"
            if init.is_file():
                return spec_from_file_location(name, init, submodule_search_locations=[str(package)])
        return None


if MutantsFinder not in sys.meta_path:
    sys.meta_path.insert(0, MutantsFinder)
