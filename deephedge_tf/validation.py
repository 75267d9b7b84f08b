"""Argument checks shared by every module: one message form, ``"<owner>: <name> must be <allowed>; got
<value>"``, raised as :class:`~deephedge_tf.errors.DeepHedgeError` (a ``ValueError``).

    >>> check_real("GBM", "sigma", 0.2, low=0.0)
    0.2
    >>> check_real("GBM", "sigma", -1, low=0.0)
    Traceback (most recent call last):
    ...
    deephedge_tf.errors.DeepHedgeError: GBM: sigma must be >= 0.0; got -1
    >>> check_int("HistoricalMarket", "steps", 40, 1, 30, " (the series has 30 returns)")
    Traceback (most recent call last):
    ...
    deephedge_tf.errors.DeepHedgeError: HistoricalMarket: steps must be an integer in [1, 30] (the series has 30 returns); got 40
"""

from __future__ import annotations

import math

import numpy as np

from deephedge_tf.errors import DeepHedgeError

__all__ = ["check_real", "check_int"]


def check_real(owner: str, name: str, value, low=None, low_open: bool = False, high=None,
               high_open: bool = False) -> float:
    """``value`` as a finite Python float within the bounds (``low < value`` if ``low_open``, else
    ``<=``; likewise ``high``).  ``bool`` is not a number here."""
    bounds = " and ".join(s for s in (
        "" if low is None else (f"> {low}" if low_open else f">= {low}"),
        "" if high is None else (f"< {high}" if high_open else f"<= {high}")) if s)
    allowed = f"a finite number{' ' + bounds if bounds else ''}"
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    x = float(value) if ok else math.nan
    if not (ok and math.isfinite(x)):
        raise DeepHedgeError(f"{owner}: {name} must be {allowed}; got {value!r}")
    if (low is not None and (x <= low if low_open else x < low)) or (
            high is not None and (x >= high if high_open else x > high)):
        raise DeepHedgeError(f"{owner}: {name} must be {bounds}; got {value!r}")
    return x


def check_int(owner: str, name: str, value, low: int, high: int | None = None, why: str = "") -> int:
    """``value`` as an int in ``[low, high]`` (no upper bound when ``high`` is None); ``why`` explains a
    bound in the message."""
    allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        raise DeepHedgeError(f"{owner}: {name} must be {allowed}{why}; got {value!r}")
    return int(value)
