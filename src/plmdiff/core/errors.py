"""Exceptions whose message is the one line a user sees."""


class PlmdiffError(Exception):
    """Base class: the message names the file, key or value and what would be accepted."""


class ConfigError(PlmdiffError):
    """The configuration is invalid."""


class CheckpointError(PlmdiffError):
    """A checkpoint directory cannot be used."""


class DataError(PlmdiffError):
    """An input data file (FASTA, Parquet, SAE) is unusable."""
