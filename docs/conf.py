"""Sphinx configuration: Markdown pages (MyST), the API reference from the docstrings.

Built offline with warnings as errors (``.ci/run``): no intersphinx, nothing fetched.
"""

from __future__ import annotations

from importlib.metadata import version as _version

project = "flask-callbot"
copyright = "flask-callbot contributors"
release = version = _version("flask-callbot")

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3  # links such as scaling.md#slow-clients-what-to-put-in-front

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_class_signature = "separated"
autodoc_default_options = {"members": True, "show-inheritance": True}

html_theme = "furo"
html_title = "flask-callbot"
