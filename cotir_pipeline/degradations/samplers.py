"""Parameter samplers for recipe steps: small, picklable, inspectable distributions.

A sampler is any callable ``(rng) -> dict`` of operator keyword arguments.
The built-ins are frozen dataclasses (so recipes pickle across worker
processes and print readably): :class:`Params` draws named fields from
:class:`Uniform`, :class:`IntRange`, :class:`Choice` or fixed values, and
:class:`OneOf` picks one of several samplers (e.g. Gaussian or Poisson noise).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


class Sampler(Protocol):
    """Draws one step's operator parameters from a generator."""

    def __call__(self, rng: np.random.Generator) -> dict[str, Any]: ...


class Distribution(Protocol):
    """Draws one parameter value."""

    def draw(self, rng: np.random.Generator) -> Any: ...


@dataclass(frozen=True)
class Uniform:
    """A float uniform on [low, high)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ValueError(f"Uniform needs low <= high, got [{self.low}, {self.high})")

    def draw(self, rng: np.random.Generator) -> float:
        """One draw."""
        return float(rng.uniform(self.low, self.high))


@dataclass(frozen=True)
class IntRange:
    """An int uniform on low..high, both ends included."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ValueError(f"IntRange needs low <= high, got {self.low}..{self.high}")

    def draw(self, rng: np.random.Generator) -> int:
        """One draw."""
        return int(rng.integers(self.low, self.high + 1))


@dataclass(frozen=True)
class Choice:
    """One of ``options``, uniformly or with ``weights`` (normalised)."""

    options: tuple[Any, ...]
    weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not self.options:
            raise ValueError("Choice needs at least one option")
        weights = self.weights
        if weights is not None and (
            len(weights) != len(self.options) or min(weights) < 0 or sum(weights) <= 0
        ):
            raise ValueError("Choice weights must be non-negative, one per option, not all zero")

    def draw(self, rng: np.random.Generator) -> Any:
        """One draw."""
        probabilities = None
        if self.weights is not None:
            total = float(sum(self.weights))
            probabilities = [w / total for w in self.weights]
        return self.options[int(rng.choice(len(self.options), p=probabilities))]


@dataclass(frozen=True)
class Fixed:
    """Always ``value`` (lists are copied so records never share state)."""

    value: Any

    def draw(self, rng: np.random.Generator) -> Any:
        """The value; ``rng`` is not used."""
        return list(self.value) if isinstance(self.value, list | tuple) else self.value


def _as_distribution(value: Any) -> Distribution:
    return value if hasattr(value, "draw") else Fixed(value)


@dataclass(frozen=True)
class Params:
    """A sampler drawing named fields in order; plain values are fixed."""

    fields: tuple[tuple[str, Distribution], ...] = ()

    @classmethod
    def of(cls, **fields: Any) -> Params:
        """``Params.of(sigma=Uniform(20, 50), color=True)``."""
        return cls(tuple((name, _as_distribution(value)) for name, value in fields.items()))

    def __call__(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw every field."""
        return {name: dist.draw(rng) for name, dist in self.fields}

    def as_mapping(self) -> Mapping[str, Distribution]:
        """The fields by name (for documentation and tests)."""
        return dict(self.fields)


@dataclass(frozen=True)
class OneOf:
    """Pick one sampler (uniformly or by ``weights``) and return its draw."""

    branches: tuple[Sampler, ...]
    weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        Choice(tuple(range(len(self.branches))), self.weights)  # validates

    def __call__(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw a branch, then its parameters."""
        index = Choice(tuple(range(len(self.branches))), self.weights).draw(rng)
        return self.branches[index](rng)


#: The sampler that draws nothing: the operator draws its own default ranges.
DEFAULTS = Params()
