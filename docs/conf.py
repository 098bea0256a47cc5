"""Sphinx configuration for the bpgpu documentation (MyST Markdown pages, autodoc API reference).

Build: ``pip install -e ".[docs]" && sphinx-build -W -b html docs docs/_build/html``
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # document the checkout being built, not an installed copy

import bpgpu  # noqa: E402

project = "bpgpu"
author = "the bpgpu developers"
copyright = "the bpgpu developers"
release = bpgpu.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]

myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
# The optional backends are imported lazily by bpgpu; never require them to build the docs.
autodoc_mock_imports = ["cupy", "cupyx"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"bpgpu {release}"


def _skip_generated_request_methods(app, what, name, obj, skip, options):
    """scikit-learn adds ``set_*_request`` methods (metadata routing) to every estimator class;
    they are scikit-learn's API, documented there, and their docstrings cite its glossary."""
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_generated_request_methods)
