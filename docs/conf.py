"""Sphinx configuration for envflow's documentation.

Build with warnings as errors::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import importlib.util
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
# Document this checkout's package, whatever copy of envflow is installed.
sys.path.insert(0, ROOT)

import salt.modules  # noqa: E402
import salt.output  # noqa: E402
import salt.runners  # noqa: E402
import salt.states  # noqa: E402

import envflow  # noqa: E402


def _load_loader_module(folder, package):
    """Load ``<folder>/envflow.py`` and register it as ``<package>.envflow``.

    The loader modules are plain files that Salt's loader reads; they cannot be
    imported by their paths, and ``envflow`` is the package's name. Registered
    under the names Salt operators know, the reference reads
    ``salt.modules.envflow.deploy(...)``.
    """
    name = f"{package.__name__}.envflow"
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, folder, "envflow.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # Leave no __pycache__ in the loader folders, which are packaged and served as they are.
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = writes_bytecode
    package.envflow = module
    return module


_load_loader_module("_modules", salt.modules)
_load_loader_module("_states", salt.states)
_load_loader_module("_runners", salt.runners)
_load_loader_module("_output", salt.output)

project = "envflow"
author = "envflow maintainers"
copyright = "envflow maintainers"
release = envflow.__version__
version = release

extensions = ["sphinx.ext.autodoc"]

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True}

exclude_patterns = ["_build"]

html_theme = "alabaster"
html_title = f"envflow {release}"
html_theme_options = {
    "description": "Promote Salt code through environments, one git branch per environment",
    "fixed_sidebar": True,
}
