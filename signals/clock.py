"""One clock domain for the whole loop: LSL's.

Every stage takes its time from a clock object instead of the wall clock, so that the
simulator and replay drive a `VirtualClock` through the same code that runs on a rig with
the `LSLClock`, faster than real time.
"""
from __future__ import annotations

import time

import pylsl


class LSLClock:
    """The LSL clock (`pylsl.local_clock()`), seconds; real time."""

    realtime = True

    def now(self) -> float:
        return pylsl.local_clock()

    def sleep_until(self, t: float) -> None:
        delay = t - pylsl.local_clock()
        if delay > 0:
            time.sleep(delay)


class VirtualClock:
    """A clock advanced by its owner (replay, lockstep simulation); never waits."""

    realtime = False

    def __init__(self, t0: float = 0.0):
        self._t = float(t0)

    def now(self) -> float:
        return self._t

    def advance_to(self, t: float) -> None:
        if t < self._t:
            raise ValueError(f"virtual clock cannot go back: {t} < {self._t}")
        self._t = float(t)

    def sleep_until(self, t: float) -> None:
        if t > self._t:
            self._t = float(t)
