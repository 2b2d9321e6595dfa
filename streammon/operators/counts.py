"""Integer counts held in the narrowest signed type they fit, widened as they grow.

A sliding window keeps a partial per pane (1,440 of them for ``Sliding('1d', step='1m')``), and a
pane's counts are small: one byte each instead of eight is most of what such a pane costs.
"""

from __future__ import annotations

import numpy as np

__all__ = ["narrowest", "add_counts", "owned"]

_TYPES = tuple(np.iinfo(t) for t in (np.int8, np.int16, np.int32, np.int64))


def narrowest(values: np.ndarray, at_least: int = 8) -> np.ndarray:
    """``values`` (integers, not empty) in the narrowest signed type of ``at_least`` bits or more that holds them."""
    lo, hi = int(values.min()), int(values.max())
    info = next(i for i in _TYPES if i.min <= lo and hi <= i.max and i.bits >= at_least)
    return values.astype(info.dtype, copy=False)


def add_counts(held: np.ndarray, where: np.ndarray | slice, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``held[where] + delta`` computed in int64, stored back into ``held`` (widened first if a count
    outgrew its type): returns (``held`` or its widened copy, the new values at ``where`` as int64)."""
    values = held[where].astype(np.int64) + delta
    fitted = narrowest(values, at_least=held.dtype.itemsize * 8)
    if fitted.dtype != held.dtype:  # widen them all, once
        held = held.astype(fitted.dtype)
    held[where] = fitted
    return held, values


def owned(held: np.ndarray) -> np.ndarray:
    """``held``, or a copy owning its data: an array unpickled from protocol 5 views the pickle's buffer
    through three more objects (~400 bytes), more than a pane's counts themselves."""
    return held if held.base is None else held.copy()
