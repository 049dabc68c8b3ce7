"""Operator parameters, declared once: each one's default draw and the values it accepts.

Every operator keeps a module-level :class:`OperatorParams` table beside it (``NOISE``
next to :func:`~cotir_pipeline.degradations.camera.noise`, ...). The operator resolves
each keyword through that table in the order it needs them: a value left as ``None`` is
drawn from the generator with the declared default, then every value is checked against
the declared limits. The table is the one place a default range or a limit is written;
docs, recipes and tests read it from there (:meth:`OperatorParams.default`).

The defaults are distributions from :mod:`~cotir_pipeline.degradations.samplers` plus the
few shapes operators need beyond them (:class:`Bernoulli`, :class:`SeedDraw`,
:class:`Ratio`, :class:`Each`, :class:`Either`). Each draws from the generator exactly as
the operators always did, so seeded outputs and recorded parameters are unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np

from cotir_pipeline.degradations._core import (
    check_choice,
    check_int,
    check_range,
    draw_seed,
    need_rng,
)
from cotir_pipeline.degradations.samplers import Distribution, Fixed


@dataclass(frozen=True)
class Bernoulli:
    """``True`` with probability ``p`` (one ``rng.random()`` draw)."""

    p: float

    def draw(self, rng: np.random.Generator) -> bool:
        """One draw."""
        return bool(rng.random() < self.p)


@dataclass(frozen=True)
class SeedDraw:
    """A field seed: a plain int below 2**53 (JSON-exact), see :func:`draw_seed`."""

    def draw(self, rng: np.random.Generator) -> int:
        """One draw."""
        return draw_seed(rng)


@dataclass(frozen=True)
class Ratio:
    """An integer draw divided by ``divisor`` (thresholds in hundredths: 50..99 / 100)."""

    numerator: Distribution
    divisor: float

    def draw(self, rng: np.random.Generator) -> float:
        """One draw."""
        return int(self.numerator.draw(rng)) / self.divisor


@dataclass(frozen=True)
class Each:
    """A list with one value per distribution, drawn in order (a colour's R, G, B)."""

    parts: tuple[Distribution, ...]

    def draw(self, rng: np.random.Generator) -> list[Any]:
        """One draw."""
        return [part.draw(rng) for part in self.parts]


@dataclass(frozen=True)
class Either:
    """``first`` with probability ``p``, else ``second`` (one ``rng.random()`` to choose)."""

    p: float
    first: Distribution
    second: Distribution

    def draw(self, rng: np.random.Generator) -> Any:
        """One draw."""
        return self.first.draw(rng) if rng.random() < self.p else self.second.draw(rng)


class Check(Protocol):
    """Validates one given or drawn value; returns it in its canonical type."""

    def __call__(self, operator: str, name: str, value: Any) -> Any: ...


@dataclass(frozen=True)
class Within:
    """A finite number in [low, high], returned as float."""

    low: float
    high: float

    def __call__(self, operator: str, name: str, value: Any) -> float:
        """The checked value."""
        return check_range(operator, name, value, self.low, self.high)


@dataclass(frozen=True)
class WholeWithin:
    """An integer (integral floats accepted) in [low, high], returned as int."""

    low: int
    high: int

    def __call__(self, operator: str, name: str, value: Any) -> int:
        """The checked value."""
        return check_int(operator, name, value, self.low, self.high)


@dataclass(frozen=True)
class Among:
    """One of ``options``."""

    options: tuple[Any, ...]

    def __call__(self, operator: str, name: str, value: Any) -> Any:
        """The checked value."""
        return check_choice(operator, name, value, self.options)


@dataclass(frozen=True)
class Flag:
    """A bool (numpy's too), returned as a plain bool."""

    def __call__(self, operator: str, name: str, value: Any) -> bool:
        """The checked value."""
        if not isinstance(value, bool | np.bool_):
            raise TypeError(f"{operator}: {name} must be a bool, got {value!r}")
        return bool(value)


@dataclass(frozen=True)
class AsInt:
    """Any value ``int()`` accepts, returned as int (field seeds)."""

    def __call__(self, operator: str, name: str, value: Any) -> int:
        """The value as int."""
        del operator, name
        return int(value)


@dataclass(frozen=True)
class Param:
    """One parameter: the default drawn when it is not given, and the check (``None``:
    taken as it is, for values whose check depends on others)."""

    default: Distribution
    check: Check | None = None


class OperatorParams:
    """An operator's parameter table, in the order the operator draws them."""

    def __init__(self, operator: str, **params: Param) -> None:
        self.operator = operator
        self.params: Mapping[str, Param] = MappingProxyType(dict(params))

    def resolve(self, rng: np.random.Generator | None, name: str, value: Any) -> Any:
        """``value``, or the declared default drawn from ``rng`` when it is ``None``; then
        checked. A fixed default needs no generator; any other raises without one."""
        param = self.params[name]
        if value is None:
            default = param.default
            if isinstance(default, Fixed):
                value = default.draw(None)  # type: ignore[arg-type]
            else:
                value = default.draw(need_rng(rng, self.operator, name))
        return value if param.check is None else param.check(self.operator, name, value)

    def default(self, name: str) -> Distribution:
        """The declared default of ``name``."""
        return self.params[name].default

    def __repr__(self) -> str:
        return f"OperatorParams({self.operator!r}, {', '.join(self.params)})"
