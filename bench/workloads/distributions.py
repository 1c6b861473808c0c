"""Arrival processes and length distributions a client spec is built from.

Each is a frozen dataclass that draws from a numpy Generator it is given, so
a trace is a pure function of its spec and seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Poisson:
    """Exponential gaps at ``rate`` requests per second."""

    rate: float

    def times(self, rng: np.random.Generator, start: float, end: float) -> list[float]:
        out, t = [], start
        while True:
            t += rng.exponential(1.0 / self.rate)
            if t >= end:
                return out
            out.append(t)


@dataclass(frozen=True)
class Bursty:
    """Gamma-distributed gaps with mean ``1/rate`` and coefficient of variation ``cv`` (> 1: bursts)."""

    rate: float
    cv: float = 3.0

    def times(self, rng: np.random.Generator, start: float, end: float) -> list[float]:
        shape = 1.0 / (self.cv * self.cv)
        scale = 1.0 / (self.rate * shape)
        out, t = [], start
        while True:
            t += rng.gamma(shape, scale)
            if t >= end:
                return out
            out.append(t)


@dataclass(frozen=True)
class OnOff:
    """Poisson at ``rate`` during on-periods, silence during off-periods (exponential durations)."""

    rate: float
    mean_on_s: float
    mean_off_s: float

    def times(self, rng: np.random.Generator, start: float, end: float) -> list[float]:
        out, t, on = [], start, True
        while t < end:
            period = rng.exponential(self.mean_on_s if on else self.mean_off_s)
            if on:
                out += Poisson(self.rate).times(rng, t, min(t + period, end))
            t += period
            on = not on
        return out


@dataclass(frozen=True)
class AllAtStart:
    """``count`` requests at ``start``: a client that is backlogged from the first instant."""

    count: int

    def times(self, rng: np.random.Generator, start: float, end: float) -> list[float]:
        return [start] * self.count


ArrivalProcess = Poisson | Bursty | OnOff | AllAtStart


@dataclass(frozen=True)
class Constant:
    value: int

    def sample(self, rng: np.random.Generator) -> int:
        return self.value


@dataclass(frozen=True)
class Uniform:
    low: int
    high: int

    def sample(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.low, self.high + 1))


@dataclass(frozen=True)
class LogNormal:
    """Log-normal with the given median, clipped to [low, high]: the long tail of real prompt lengths."""

    median: float
    sigma: float
    low: int
    high: int

    def sample(self, rng: np.random.Generator) -> int:
        return int(
            np.clip(round(self.median * np.exp(self.sigma * rng.standard_normal())), self.low, self.high)
        )


LengthDistribution = Constant | Uniform | LogNormal
