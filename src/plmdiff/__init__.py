"""plmdiff: how a protein language model changes over rounds of DPO alignment.

The library behind the Snakemake workflow: every stage's logic lives here as small typed
functions, importable from a notebook and tested directly.
"""

__version__ = "0.1.0"
