"""Where the controller's decisions go: the `vnsloop-command`, `vnsloop-state` and
`vnsloop-events` LSL outlets on a rig, or an in-memory log in lockstep simulation and replay.

Both kinds keep a log of everything sent, which the report and the replay comparison read.
"""
from __future__ import annotations

import uuid

import numpy as np
import pylsl

from controller.types import COMMAND_CHANNELS, STATE_CHANNELS, Command, StateEstimate
from signals.events import Event
from signals.xdf_source import CONTROLLER_OUTPUTS

COMMAND_STREAM, STATE_STREAM, EVENTS_STREAM = CONTROLLER_OUTPUTS

_UNITS = {"seq": "count", "amplitude_mA": "mA", "frequency_Hz": "Hz", "pulse_width_us": "us",
          "train_on_s": "s", "train_off_s": "s", "enabled": "bool"}


class OutputLog:
    """Everything the controller sent, in order, as plain Python lists."""

    def __init__(self) -> None:
        self.command_t: list[float] = []
        self.commands: list[list[float]] = []
        self.state_t: list[float] = []
        self.states: list[list[float]] = []
        self.events: list[Event] = []

    def send_command(self, cmd: Command) -> None:
        self.command_t.append(cmd.t)
        self.commands.append(cmd.as_sample())

    def send_state(self, est: StateEstimate) -> None:
        self.state_t.append(est.t)
        self.states.append(est.as_sample())

    def send_event(self, ev: Event) -> None:
        self.events.append(ev)

    def command_array(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.asarray(self.command_t, float),
                np.asarray(self.commands, float).reshape(-1, len(COMMAND_CHANNELS)))

    def state_array(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.asarray(self.state_t, float),
                np.asarray(self.states, float).reshape(-1, len(STATE_CHANNELS)))


def _info(name: str, type_: str, channels: tuple[str, ...], rate: float, fmt: str,
          source_id: str, units: dict[str, str] | None = None) -> pylsl.StreamInfo:
    info = pylsl.StreamInfo(name, type_, len(channels), rate, fmt, source_id)
    chans = info.desc().append_child("channels")
    for c in channels:
        ch = chans.append_child("channel")
        ch.append_child_value("label", c)
        if units and c in units:
            ch.append_child_value("unit", units[c])
    info.desc().append_child_value("manufacturer", "vnsloop")
    return info


class LSLOutputs(OutputLog):
    """The three LSL outlets of one controller; time stamps are the loop's LSL-clock times."""

    def __init__(self, source_id: str | None = None, tick_hz: float = 4.0):
        super().__init__()
        self.source_id = source_id or f"vnsloop-{uuid.uuid4().hex[:12]}"
        sid = self.source_id
        self._cmd = pylsl.StreamOutlet(_info(COMMAND_STREAM, "Stimulation", COMMAND_CHANNELS,
                                             pylsl.IRREGULAR_RATE, "double64", sid + "-command",
                                             _UNITS))
        self._state = pylsl.StreamOutlet(_info(STATE_STREAM, "State", STATE_CHANNELS, tick_hz,
                                               "double64", sid + "-state"))
        self._events = pylsl.StreamOutlet(_info(EVENTS_STREAM, "Markers", ("event",),
                                                pylsl.IRREGULAR_RATE, "string", sid + "-events"))

    @property
    def stream_source_ids(self) -> dict[str, str]:
        return {COMMAND_STREAM: self.source_id + "-command", STATE_STREAM: self.source_id + "-state",
                EVENTS_STREAM: self.source_id + "-events"}

    def send_command(self, cmd: Command) -> None:
        # Push at once (no buffering): a STOP must leave within the call.
        self._cmd.push_sample(cmd.as_sample(), cmd.t, True)
        super().send_command(cmd)

    def send_state(self, est: StateEstimate) -> None:
        self._state.push_sample(est.as_sample(), est.t)
        super().send_state(est)

    def send_event(self, ev: Event) -> None:
        self._events.push_sample([ev.to_json()], ev.t)
        super().send_event(ev)

    def close(self) -> None:
        del self._cmd, self._state, self._events
