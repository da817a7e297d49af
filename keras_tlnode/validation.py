"""Argument checks shared by the package, with one exception policy.

A value of the wrong type raises `TypeError`; a value of the right type but
outside its range raises `ValueError`. Every message names the argument and
says what it expects. Nothing is coerced beyond exact conversions (a NumPy
integer to `int`, a real number to `float`).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def check_int(value: object, name: str, minimum: int = 1, maximum: int | None = None) -> int:
    """`value` as an int in [minimum, maximum]."""
    expected = f"an int in [{minimum}, {maximum}]" if maximum is not None else f"an int >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be {expected}, got {value!r} ({type(value).__name__}).")
    number = int(value)
    if number < minimum or (maximum is not None and number > maximum):
        raise ValueError(f"`{name}` must be {expected}, got {value!r}.")
    return number


def check_optional_int(value: object, name: str, minimum: int = 1) -> int | None:
    """`value` as an int >= minimum, or None."""
    return None if value is None else check_int(value, name, minimum)


def check_float(value: object, name: str, positive: bool = False, non_negative: bool = False) -> float:
    """`value` as a finite float (> 0 if `positive`, >= 0 if `non_negative`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a finite number, got {value!r} ({type(value).__name__}).")
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
    if positive and value <= 0:
        raise ValueError(f"`{name}` must be > 0, got {value!r}.")
    if non_negative and value < 0:
        raise ValueError(f"`{name}` must be >= 0, got {value!r}.")
    return float(value)


def check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool, got {value!r} ({type(value).__name__}).")
    return value


def check_choice(value: object, name: str, choices: Sequence[str]) -> str:
    """`value`, one of the strings `choices`."""
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be one of {tuple(choices)}, got {value!r} ({type(value).__name__}).")
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}.")
    return value


def check_instance(value: T, name: str, cls: type, optional: bool = False) -> T:
    """`value`, an instance of `cls` (or None if `optional`)."""
    if (value is None and optional) or isinstance(value, cls):
        return value
    expected = f"a {cls.__name__}" + (" or None" if optional else "")
    raise TypeError(f"`{name}` must be {expected}, got {type(value).__name__}.")


def check_duration(duration: object, t_final: object) -> float:
    """The interval's length from `duration`, or from its deprecated name `t_final`; 1.0 if neither."""
    if t_final is not None:
        if duration is not None:
            raise ValueError("Pass `duration` only: `t_final` is its deprecated name.")
        warnings.warn(
            "`t_final` is deprecated and will be removed in 1.0: it is the interval's length, "
            "so it is now called `duration`.",
            DeprecationWarning,
            stacklevel=4,
        )
        duration, name = t_final, "t_final"
    else:
        name = "duration"
    return check_float(1.0 if duration is None else duration, name, positive=True)


def check_field_shape(produced: tuple, state_shape: tuple) -> None:
    """A vector field's per-sample output shape must be the state's."""
    if produced != state_shape:
        raise ValueError(
            f"`vector_field` must return a tensor shaped like its input state {state_shape} "
            f"(per sample), got {produced}."
        )
