"""Sizes as people write them on command lines and in settings."""

from __future__ import annotations

import argparse
import math

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def size(text: str) -> int:
    """A size in bytes from ``123``, ``512K``, ``4G`` (binary units; a trailing ``B`` or ``i`` is allowed)."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in _UNITS else ""
    try:
        number = float(value[: len(value) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 512M, 4G)") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 512M, 4G)")
    if number < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a size cannot be negative")
    return int(number * _UNITS[unit])
