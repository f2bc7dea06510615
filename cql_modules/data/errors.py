"""Exceptions raised by the data layer for bad input (never a raw h5py/minari traceback)."""


class DatasetError(ValueError):
    """The dataset is unusable: corrupt file, missing key, NaN/inf values, mismatched spaces."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset is not available locally; the message says what, where, and how to get it."""
