"""
Print what ``salt-run envflow.status``, ``envflow.history`` and ``envflow.diff`` return as readable tables.

Those runners (and ``envflow.preview``) return ``outputter: envflow``, which ``salt-run`` follows when
no ``--out`` is given; ``--out=json`` (or ``yaml``, ``nested``) prints the
structured return itself, as orchestrate gets it. Data of any other shape is
printed by Salt's ``nested`` outputter.

CLI Example:

.. code-block:: bash

    salt-run envflow.status
    salt-run envflow.status --out=json
    salt-run envflow.history prod --out=envflow
"""

try:
    from envflow import tables

    HAS_ENVFLOW = True
except ImportError:
    HAS_ENVFLOW = False

__virtualname__ = "envflow"


def __virtual__():
    if not HAS_ENVFLOW:
        return False, "envflow: the envflow package is not installed"
    return __virtualname__


def output(data, **kwargs):
    """Render ``data`` as envflow's tables, or as Salt's ``nested`` output when it is not a return they know."""
    shown = {key: value for key, value in data.items() if key != "outputter"} if isinstance(data, dict) else data
    text = tables.render(shown)
    if text is None:
        return __salt__["nested"](data, **kwargs)
    return text
