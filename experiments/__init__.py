"""Experiments built on hf_rskip: the benchmark (``benchmark``) and the reproduction of the paper (``reproduce``).

Not part of the installed package: they run from a source checkout through ``scripts/bench.py`` and
``scripts/reproduce.py``, and import the library like any user code would.
"""
