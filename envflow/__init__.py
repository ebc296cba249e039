"""envflow: promote Salt code through environments, one branch per environment.

The plain package that holds the logic. It has no Salt dunders: the loader
modules in ``_modules``, ``_states`` and ``_runners`` read the configuration,
call it and shape what Salt returns.
"""

__version__ = "0.1.0"
