"""Sphinx configuration of the discord-ext-listening documentation.

Built by ``python3 dev.py docs`` (warnings are errors). Nothing here reaches the network:
no intersphinx, no remote images, no analytics.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from sphinx.ext.napoleon.docstring import GoogleDocstring

ROOT = Path(__file__).resolve().parent.parent
# The version comes from pyproject.toml, not from importing the package: a package that
# fails to import then costs the API pages (autodoc reports each failure), not the site.
# autodoc imports ``discord.ext.listening`` from the editable install in .venv.
with (ROOT / "pyproject.toml").open("rb") as f:
    _project = tomllib.load(f)["project"]

project = "discord-ext-listening"
author = "the discord-ext-listening authors"
copyright = "the discord-ext-listening authors"
release = _project["version"]
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
# TEAM_NOTES.md is the engineers' working notes, not user documentation.
exclude_patterns = ["_build", "TEAM_NOTES.md", "Thumbs.db", ".DS_Store"]

# -- MyST (Markdown pages) ------------------------------------------------------------------

# "#section" links inside and between pages: headings up to ### get anchors.
myst_heading_anchors = 3

# -- autodoc + napoleon (numpy-style docstrings, as discord.py) -------------------------------

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
# A method we override without a docstring would otherwise show discord.py's text (and its
# substitutions, which only discord.py's own documentation defines).
autodoc_inherit_docstrings = False
autodoc_default_options = {"members": True, "show-inheritance": True}


def _attribute_docstring_as_prose(self: GoogleDocstring) -> list[str]:
    # napoleon reads the first line of an attribute's or property's docstring as
    # "type: description" and renders "8-byte datagrams: echoes..." as a type. Ours are prose
    # (discord.py style); the type comes from the annotation, which autodoc shows anyway.
    return list(self._consume_to_end())


GoogleDocstring._parse_attribute_docstring = _attribute_docstring_as_prose  # type: ignore[method-assign]

napoleon_google_docstring = False
napoleon_numpy_docstring = True
# "Attributes" sections become fields of the class, so a documented attribute that autodoc
# also lists as a member is not described twice.
napoleon_use_ivar = True
napoleon_use_rtype = False
napoleon_preprocess_types = False

python_use_unqualified_type_names = True
add_module_names = False

# -- HTML ----------------------------------------------------------------------------------

html_theme = "furo"
html_title = f"discord-ext-listening {release}"
html_static_path: list[str] = []
html_show_sourcelink = False
