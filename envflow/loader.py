"""Where Salt finds envflow's loader modules (the ``salt.loader`` entry point), and how they import the package."""

import importlib
import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def salt_dirs():
    """Return the directories of envflow's execution, state, runner and output modules, by loader kind.

    An installed wheel holds them in ``envflow/salt_<kind>``; a source checkout
    (``pip install -e``) in the top-level ``_<kind>`` folders.
    """
    dirs = {}
    for kind in ("modules", "states", "runners", "output"):
        for candidate in (os.path.join(_HERE, f"salt_{kind}"), os.path.join(os.path.dirname(_HERE), f"_{kind}")):
            if os.path.isdir(candidate):
                dirs[kind] = [candidate]
                break
    return dirs


class Deferred:
    """One of envflow's modules, imported when a call first uses it: a call imports only what it runs.

    Salt's loader looks at every public name of a loader module to find its
    functions (``inspect.isfunction``); a deferred module answers that
    without being imported.
    """

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self):
        return f"<deferred {self._name}>"
