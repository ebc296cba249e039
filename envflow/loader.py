"""Where Salt finds envflow's loader modules (the ``salt.loader`` entry point)."""

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
