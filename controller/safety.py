"""The safety supervisor: the last stage before any output. Nothing reaches the generator
without passing `SafetySupervisor.guard` (or one of its immediate-stop paths).

Per tick, a numba kernel (`_guard_kernel`) works over explicit float arrays (state, limits,
duty buckets, unsafe regions) and returns the safe setting plus a bitmask of the rules that
intervened; the class turns the (rare) nonzero bits into `Event`s and owns the state.

Contract with the generator (what "delivered" means for the duty-cycle rules):
- `enabled` 0 -> 1 starts a train: ON for train_on_s, OFF for train_off_s, repeating while
  enabled. train_on_s/train_off_s are latched at that edge; proposals that change them while
  enabled take effect at the next enable. `enabled` 1 -> 0 stops at once.
- amplitude is the generator's setting; it ramps (and only rises while enabled, so that it
  never climbs silently). A stop (operator, bradycardia, stale input, policy off) sets
  amplitude 0 and enabled 0 at once; stimulation then restarts from 0 mA.

Absolute caps below are the one place no configuration can exceed; `controller.config`
validates against them.
"""
from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from controller.types import Command, Stimulation
from signals.events import Event

# ---- absolute caps (DESIGN.md, safety table) ------------------------------------------------
ABS_AMPLITUDE_MAX_MA = {"cervical": 3.5, "taVNS": 5.0}
ABS_FREQUENCY_MIN_HZ = 1.0
ABS_FREQUENCY_MAX_HZ = 30.0
ABS_PULSE_WIDTH_MIN_US = 130.0
ABS_PULSE_WIDTH_MAX_US = 1000.0
ABS_SHANNON_K_MAX = 1.5          # tissue damage seen at k >= 1.85 (Shannon 1992)
ABS_RAMP_UP_MA_PER_S = 0.05
ABS_RAMP_DOWN_MA_PER_S = 0.25
ABS_TRAIN_ON_MAX_S = 60.0
ABS_DUTY_MAX = 0.5               # also gives OFF >= ON
# Ectopic beats: a beat this early against recent normal beats is premature, and the long
# interval after it is compensatory when the pair spans at most this many normal intervals.
PREMATURE_RATIO = 0.8
RECENT_BEATS = 8                # normal intervals kept to judge a compensatory pause
COMPENSATORY_PAIR_MAX = 2.2
ABS_BRADY_HR_MIN_BPM = 50.0      # a config may only raise it
ABS_RR_PAUSE_MAX_S = 2.5         # a config may only shorten it
ABS_LOCKOUT_MIN_S = 600.0        # a config may only lengthen it
ABS_NO_BEAT_HOLD_MAX_S = 2.0
# Assumed electrode areas. Cervical 0.1 cm2 puts 3.5 mA x 500 us (the top of the LivaNova
# labelling) at k = 1.49, just inside 1.5; at 1000 us it allows 1.78 mA. taVNS ear electrodes
# are larger; 0.5 cm2 is a conservative guess. Configure the real area of your electrode.
DEFAULT_ELECTRODE_AREA_CM2 = {"cervical": 0.1, "taVNS": 0.5}
# The runtime re-sends at least every second, so the generator runs at most this long on one
# command; the duty rules look this far ahead.
MAX_COMMAND_GAP_S = 1.0
MAX_UNSAFE_REGIONS = 64
REGION_COLUMNS = 4              # low_Hz, high_Hz, amplitude cap, charge-rate cap
DUTY_WINDOW_MAX_S = 600.0


class ConfigError(ValueError):
    """A configuration value that is missing, of the wrong type, or outside its range."""


def spec(default, lo=None, hi=None, unit: str = "", note: str = "", choices=None):
    """A dataclass field with its allowed range; `check_fields` enforces it."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "unit": unit, "note": note,
                                            "choices": choices})


def _fmt(x) -> str:
    return repr(x) if isinstance(x, str) else f"{x:g}" if isinstance(x, float) else str(x)


def range_error(key: str, value, lo, hi, unit: str = "", note: str = "") -> ConfigError:
    u = f" {unit}" if unit else ""
    n = f" ({note})" if note else ""
    return ConfigError(f"{key} = {value!r} is outside the allowed range "
                       f"{_fmt(lo)} to {_fmt(hi)}{u}{n}")


def check_fields(obj, prefix: str) -> None:
    """Type, finiteness, range and choices of every field of a spec'd dataclass."""
    for f in dataclasses.fields(obj):
        if f.default is dataclasses.MISSING:
            continue  # a nested section, checked when it was built
        key, v, m = f"{prefix}{f.name}", getattr(obj, f.name), f.metadata
        want = type(f.default)
        if want is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        else:
            ok = isinstance(v, want) and (want is bool or not isinstance(v, bool))
        if not ok:
            raise ConfigError(f"{key} = {v!r} has the wrong type: expected {want.__name__}, "
                              f"got {type(v).__name__}")
        if want is float and not math.isfinite(v):
            raise ConfigError(f"{key} = {v!r} must be a finite number")
        if m.get("choices") and v not in m["choices"]:
            raise ConfigError(f"{key} = {v!r} is not one of: {', '.join(m['choices'])}")
        lo, hi = m.get("lo"), m.get("hi")
        if lo is not None and not (lo <= v <= hi):
            raise range_error(key, v, lo, hi, m.get("unit", ""), m.get("note", ""))


@dataclass(frozen=True)
class SafetyLimits:
    """The supervisor's limits; the `[safety]` section of the configuration."""

    electrode: str = spec("cervical", choices=tuple(ABS_AMPLITUDE_MAX_MA))
    # range checked against the electrode's cap in `validate`
    amplitude_max_mA: float = 3.5
    electrode_area_cm2: float = spec(0.1, 0.01, 10.0, "cm2", "geometric contact area")
    frequency_min_Hz: float = spec(1.0, ABS_FREQUENCY_MIN_HZ, ABS_FREQUENCY_MAX_HZ, "Hz",
                                   "absolute cap")
    frequency_max_Hz: float = spec(30.0, ABS_FREQUENCY_MIN_HZ, ABS_FREQUENCY_MAX_HZ, "Hz",
                                   "absolute cap")
    pulse_width_min_us: float = spec(130.0, ABS_PULSE_WIDTH_MIN_US, ABS_PULSE_WIDTH_MAX_US,
                                     "us", "absolute cap")
    pulse_width_max_us: float = spec(1000.0, ABS_PULSE_WIDTH_MIN_US, ABS_PULSE_WIDTH_MAX_US,
                                     "us", "absolute cap")
    shannon_k_max: float = spec(1.5, 0.0, ABS_SHANNON_K_MAX, "",
                                "Shannon k; damage seen at 1.85")
    ramp_up_mA_per_s: float = spec(0.05, 0.001, ABS_RAMP_UP_MA_PER_S, "mA/s", "absolute cap")
    ramp_down_mA_per_s: float = spec(0.25, 0.01, ABS_RAMP_DOWN_MA_PER_S, "mA/s",
                                     "absolute cap")
    train_on_max_s: float = spec(60.0, 0.5, ABS_TRAIN_ON_MAX_S, "s", "absolute cap")
    duty_max: float = spec(0.5, 0.01, ABS_DUTY_MAX, "", "fraction of time ON; absolute cap")
    duty_window_s: float = spec(120.0, 10.0, DUTY_WINDOW_MAX_S, "s",
                                "sliding window of the delivered duty")
    bradycardia_hr_min_bpm: float = spec(50.0, ABS_BRADY_HR_MIN_BPM, 80.0, "bpm",
                                         "may only be raised")
    rr_pause_max_s: float = spec(2.5, 1.3, ABS_RR_PAUSE_MAX_S, "s", "may only be shortened")
    lockout_s: float = spec(600.0, ABS_LOCKOUT_MIN_S, 86400.0, "s", "may only be lengthened")
    no_beat_hold_s: float = spec(2.0, 0.5, ABS_NO_BEAT_HOLD_MAX_S, "s",
                                 "no valid beat for this long: hold")
    stale_stop_s: float = spec(3.0, 0.5, 30.0, "s", "stale for this much longer: stop")
    quality_min: float = spec(0.5, 0.05, 1.0, "", "signal quality below this: stale")
    reject_stop_s: float = spec(2.0, 0.0, 10.0, "s",
                                "bad proposals for this long: stop instead of hold")
    discomfort_step_mA: float = spec(0.25, 0.05, 5.0, "mA", "step down on a side effect")
    discomfort_factor: float = spec(0.75, 0.1, 0.95, "", "or down to this fraction, if lower")
    # A-fibre side effects (hoarseness, cough) grow with frequency at a given charge: a region
    # marked unsafe covers every higher frequency, and this much below.
    unsafe_region_below_Hz: float = spec(5.0, 0.0, 29.0, "Hz",
                                         "frequencies this far below share the ceiling")
    event_repeat_s: float = spec(10.0, 1.0, 3600.0, "s",
                                 "a rule that keeps intervening is reported again after this")

    @classmethod
    def from_config(cls, config) -> "SafetyLimits":
        """The limits of a `controller.config.Config` (its `[safety]` section)."""
        return config.safety

    @property
    def charge_max_uC(self) -> float:
        """Largest charge per phase with log10(Q) + log10(Q/A) < k_max."""
        return math.sqrt(self.electrode_area_cm2 * 10.0 ** self.shannon_k_max)

    def validate(self, prefix: str = "safety.") -> None:
        check_fields(self, prefix)
        cap = ABS_AMPLITUDE_MAX_MA[self.electrode]
        a = self.amplitude_max_mA
        if not isinstance(a, (int, float)) or isinstance(a, bool) or not math.isfinite(a):
            raise ConfigError(f"{prefix}amplitude_max_mA = {a!r} must be a finite number")
        if not 0.0 <= a <= cap:
            raise range_error(f"{prefix}amplitude_max_mA", a, 0.0, cap, "mA",
                              "absolute cap for " + ("cervical VNS" if self.electrode == "cervical" else "taVNS"))
        for lo, hi in (("frequency_min_Hz", "frequency_max_Hz"),
                       ("pulse_width_min_us", "pulse_width_max_us")):
            if getattr(self, lo) > getattr(self, hi):
                raise ConfigError(f"{prefix}{lo} = {_fmt(getattr(self, lo))} is above "
                                  f"{prefix}{hi} = {_fmt(getattr(self, hi))}")

    def as_array(self) -> np.ndarray:
        L = np.zeros(N_LIMITS)
        L[L_AMAX] = self.amplitude_max_mA
        L[L_FMIN], L[L_FMAX] = self.frequency_min_Hz, self.frequency_max_Hz
        L[L_PWMIN], L[L_PWMAX] = self.pulse_width_min_us, self.pulse_width_max_us
        # strictly below k_max
        L[L_QMAX] = self.charge_max_uC * (1.0 - 1e-9)
        L[L_UP], L[L_DOWN] = self.ramp_up_mA_per_s, self.ramp_down_mA_per_s
        L[L_ONMAX] = self.train_on_max_s
        L[L_OFF_RATIO] = (1.0 - self.duty_max) / self.duty_max
        L[L_DUTY_ON_MAX] = self.duty_max * self.duty_window_s
        L[L_WINDOW] = self.duty_window_s
        L[L_HOLD] = self.no_beat_hold_s
        L[L_STALE_STOP] = self.stale_stop_s
        L[L_QMIN] = self.quality_min
        L[L_PAUSE] = self.rr_pause_max_s
        L[L_REJECT_STOP] = self.reject_stop_s
        L[L_LOCKOUT] = self.lockout_s
        return L


# ---- array layouts ----------------------------------------------------------------------------
(L_AMAX, L_FMIN, L_FMAX, L_PWMIN, L_PWMAX, L_QMAX, L_UP, L_DOWN, L_ONMAX, L_OFF_RATIO,
 L_DUTY_ON_MAX, L_WINDOW, L_HOLD, L_STALE_STOP, L_QMIN, L_PAUSE, L_REJECT_STOP,
 L_LOCKOUT) = range(18)
N_LIMITS = 18

# output settings (same order as Stimulation.as_array)
O_A, O_F, O_PW, O_ON, O_OFF, O_EN = range(6)
(S_T, S_A, S_F, S_PW, S_ON, S_OFF, S_EN,      # last output and its time
 S_STOPPED, S_LOCK,                           # operator latch, bradycardia lockout until
 S_LAST_BEAT, S_T0, S_QUALITY, S_QLOW_SINCE,  # input freshness
 S_CYC, S_LAST_ON_END, S_LAST_ON_LEN,         # delivered pattern: train start, last ON stretch
 S_ACC_T, S_BSEC,                             # duty accounting cursor, newest bucket second
 S_BAD_SINCE, S_NREG) = range(20)
N_STATE = 20
N_BUCKETS = int(DUTY_WINDOW_MAX_S) + 2

# rule bits
B_BAD_NUMBER = 1 << 0      # non-finite or negative value in the proposal: rejected
B_AMPLITUDE = 1 << 1       # amplitude beyond its range: rejected
B_FREQUENCY = 1 << 2       # frequency beyond its range: rejected
B_PULSE_WIDTH = 1 << 3     # pulse width beyond its range: rejected
B_REJECT_STOP = 1 << 4     # rejections went on too long: stop
B_CHARGE = 1 << 5          # amplitude or pulse width reduced for charge density
B_RAMP = 1 << 6            # amplitude change rate-limited
B_DUTY_PARAMS = 1 << 7     # train_on shortened / train_off lengthened
B_DUTY_GAP = 1 << 8        # enable refused: OFF not yet as long as the last ON
B_DUTY_WINDOW = 1 << 9     # enable refused or cut: delivered duty over the window
B_REGION = 1 << 10         # unsafe-region ceiling (discomfort) applied
B_STALE_HOLD = 1 << 11     # stale input: increase refused
B_STALE_STOP = 1 << 12     # stale input for too long: stop
B_PAUSE = 1 << 13          # no beat for rr_pause_max_s: stop and lockout
B_LOCKOUT = 1 << 14        # enable refused during the bradycardia lockout
B_OPERATOR = 1 << 15       # enable refused while operator-stopped
B_CLOCK = 1 << 16          # time went backwards or is not finite: previous time used
B_ENVELOPE = 1 << 17       # final envelope check failed (should never happen): stop

RULES = {  # bit -> (event kind, rule, reason)
    B_BAD_NUMBER: ("safety.bad_number", "bad_number", "proposal has a non-finite or negative value; "
                   "rejected, last safe setting held"),
    B_AMPLITUDE: ("safety.amplitude", "amplitude", "proposed amplitude outside the allowed range; "
                  "rejected, last safe setting held"),
    B_FREQUENCY: ("safety.frequency", "frequency", "proposed frequency outside the allowed range; "
                  "rejected, last safe setting held"),
    B_PULSE_WIDTH: ("safety.pulse_width", "pulse_width", "proposed pulse width outside the allowed range; "
                    "rejected, last safe setting held"),
    B_REJECT_STOP: ("safety.bad_number", "reject_stop", "proposals rejected for too long; stimulation stopped"),
    B_CHARGE: ("safety.charge_density", "charge_density", "charge density at or above the Shannon limit; "
               "reduced"),
    B_RAMP: ("safety.ramp", "ramp", "amplitude change faster than the ramp limit; rate-limited"),
    B_DUTY_PARAMS: ("safety.duty_cycle", "duty_params", "train ON too long or OFF shorter than allowed; "
                    "adjusted"),
    B_DUTY_GAP: ("safety.duty_cycle", "duty_off_time", "enable refused: OFF not yet as long as the last ON"),
    B_DUTY_WINDOW: ("safety.duty_cycle", "duty_window", "delivered duty over the window at its limit; "
                    "stimulation held off"),
    B_REGION: ("safety.discomfort", "unsafe_region", "setting in a region marked unsafe by a side effect; "
               "amplitude capped"),
    B_STALE_HOLD: ("safety.stale_input", "stale_hold", "no fresh valid beat or poor signal quality; "
                   "holding (no increase)"),
    B_STALE_STOP: ("safety.stale_input", "stale_stop", "input stale for too long; stimulation stopped"),
    B_PAUSE: ("safety.bradycardia", "rr_pause", "RR pause: no beat for too long; stopped, locked out"),
    B_LOCKOUT: ("safety.bradycardia", "lockout", "bradycardia lockout active; stimulation refused"),
    B_OPERATOR: ("safety.operator", "operator", "operator STOP active; waiting for RESUME"),
    B_CLOCK: ("safety.clock", "clock", "time not finite or earlier than the last command; "
              "previous time used"),
    B_ENVELOPE: ("safety.envelope", "envelope", "final envelope check failed; stimulation stopped"),
}


# ---- kernels ----------------------------------------------------------------------------------
@njit(cache=True)
def _on_upto(x, on, period):
    """Delivered ON time in [0, x) of a train that starts ON at 0."""
    if x <= 0.0:
        return 0.0
    n = math.floor(x / period)
    return n * on + min(x - n * period, on)


@njit(cache=True)
def _touch(sec, S, B):
    """Make bucket `sec` (whole seconds) the newest, zeroing the ones skipped."""
    last = S[S_BSEC]
    if sec <= last:
        return
    nb = B.shape[0]
    k = last + 1.0
    if sec - last > nb:
        k = sec - nb + 1.0
    while k <= sec:
        B[int(k % nb)] = 0.0
        k += 1.0
    S[S_BSEC] = sec


@njit(cache=True)
def _advance(t, S, B):
    """Account the delivered ON time from the accounting cursor up to t into 1 s buckets."""
    a = S[S_ACC_T]
    _touch(math.floor(t), S, B)
    if t <= a:
        return
    nb = B.shape[0]
    if S[S_EN] > 0.5:
        on, period, c = S[S_ON], S[S_ON] + S[S_OFF], S[S_CYC]
        if t - a > nb:
            a = t - nb
        while a < t:
            e = min(math.floor(a) + 1.0, t)
            B[int(math.floor(a) % nb)] += _on_upto(e - c, on, period) - _on_upto(a - c, on,
                                                                                 period)
            a = e
    S[S_ACC_T] = t


@njit(cache=True)
def _window_on(t, S, L, B):
    """Delivered ON time in the window ending at t, rounded out to whole seconds (so never
    less than the true value)."""
    nb = B.shape[0]
    sec = math.floor(t)
    n = int(math.ceil(L[L_WINDOW])) + 1
    s = 0.0
    for i in range(n):
        s += B[int((sec - i) % nb)]
    return s


@njit(cache=True)
def _disable(t, S):
    """Record the ON stretch that an enable falling edge at t ends."""
    on, period = S[S_ON], S[S_ON] + S[S_OFF]
    x = t - S[S_CYC]
    psi = x - math.floor(x / period) * period
    if psi < on:
        S[S_LAST_ON_END] = t
        S[S_LAST_ON_LEN] = psi
    elif x >= on:
        S[S_LAST_ON_END] = t - (psi - on)
        S[S_LAST_ON_LEN] = on


@njit(cache=True)
def _force_off(t, S, B):
    """Immediate stop at t (operator, bradycardia): amplitude 0, disabled."""
    if not (t >= S[S_T]):
        t = S[S_T]
    _advance(t, S, B)
    if S[S_EN] > 0.5:
        _disable(t, S)
    S[S_T] = t
    S[S_A] = 0.0
    S[S_EN] = 0.0
    return t


@njit(cache=True)
def _ceiling(f, S, R):
    c = np.inf
    for i in range(int(S[S_NREG])):
        if R[i, 0] <= f <= R[i, 1]:
            c = min(c, R[i, 2])
            if f > 0.0:
                c = min(c, R[i, 3] / f)
    return c


@njit(cache=True)
def _amplitude_ceiling(f, pw, S, L, R):
    """The highest amplitude a guard would let out at frequency f and pulse width pw (NaN:
    whatever pulse width)."""
    c = L[L_AMAX]
    r = _ceiling(f, S, R)
    if r < c:
        c = r
    if pw == pw:
        q = L[L_QMAX] * 1000.0 / pw
        if q < c:
            c = q
    return c


@njit(cache=True)
def _signal(t, beat_t, q, S, L):
    """Input freshness at t: the latest valid beat (NaN: none new) and the signal quality."""
    if not math.isfinite(t):
        t = S[S_T]
    b = t if beat_t > t else beat_t
    if math.isfinite(b) and not (S[S_LAST_BEAT] >= b):
        S[S_LAST_BEAT] = b
    if not math.isfinite(q):
        q = 0.0   # unknown quality counts as poor
    S[S_QUALITY] = q
    if q < L[L_QMIN]:
        if not S[S_QLOW_SINCE] <= t:
            S[S_QLOW_SINCE] = t
    else:
        S[S_QLOW_SINCE] = np.nan


@njit(cache=True)
def _guard_kernel(t, p, S, L, B, R, out, heartbeat):
    """One guarded tick: proposal p (Stimulation order) -> out, returns rule bits."""
    bits = 0
    if not (t >= S[S_T]) or not math.isfinite(t):
        bits |= B_CLOCK
        t = S[S_T]
    dt = t - S[S_T]
    _advance(t, S, B)
    a0, f0, pw0, en0 = S[S_A], S[S_F], S[S_PW], S[S_EN] > 0.5

    # -- bad numbers and out-of-range values: reject the whole proposal, hold the last output
    a, f, pw, on, off, en = p[0], p[1], p[2], p[3], p[4], p[5]
    bad = 0
    for i in range(6):
        if not math.isfinite(p[i]):
            bad |= B_BAD_NUMBER
    if bad == 0:
        if on <= 0.0 or off < 0.0:
            bad |= B_BAD_NUMBER
        if not (0.0 <= a <= L[L_AMAX]):
            bad |= B_AMPLITUDE
        if not (L[L_FMIN] <= f <= L[L_FMAX]):
            bad |= B_FREQUENCY
        if not (L[L_PWMIN] <= pw <= L[L_PWMAX]):
            bad |= B_PULSE_WIDTH
    stop = False
    if bad != 0:
        bits |= bad
        a, f, pw, on, off, en = a0, f0, pw0, S[S_ON], S[S_OFF], S[S_EN]
        if not heartbeat:
            if not (S[S_BAD_SINCE] <= t):
                S[S_BAD_SINCE] = t
            if t - S[S_BAD_SINCE] >= L[L_REJECT_STOP]:
                bits |= B_REJECT_STOP
                stop = True
    elif not heartbeat:
        S[S_BAD_SINCE] = np.nan
    want_en = en > 0.5
    asks = want_en or a > a0
    # a policy asking for off with 0 mA is a stop, not an intervention
    if not want_en and a == 0.0:
        stop = True

    # -- stop conditions
    if S[S_STOPPED] > 0.5:
        stop = True
        if asks:
            bits |= B_OPERATOR
    if t < S[S_LOCK]:
        stop = True
        if asks:
            bits |= B_LOCKOUT
    if S[S_LAST_BEAT] == S[S_LAST_BEAT] and t - S[S_LAST_BEAT] > L[L_PAUSE] \
            and not (S[S_QUALITY] < L[L_QMIN]) and t >= S[S_LOCK]:
        S[S_LOCK] = t + L[L_LOCKOUT]
        stop = True
        bits |= B_PAUSE
    beat_ref = S[S_LAST_BEAT] if S[S_LAST_BEAT] == S[S_LAST_BEAT] else S[S_T0]
    stale_since = beat_ref + L[L_HOLD]
    if S[S_QLOW_SINCE] == S[S_QLOW_SINCE] and S[S_QLOW_SINCE] < stale_since:
        stale_since = S[S_QLOW_SINCE]
    stale = t >= stale_since
    if stale and t - stale_since >= L[L_STALE_STOP]:
        stop = True
        if asks or en0 or a0 > 0.0:
            bits |= B_STALE_STOP
    return _finish(t, dt, stop, stale, want_en, a, f, pw, on, off, bits, S, L, B, R, out)


@njit(cache=True)
def _finish(t, dt, stop, stale, want_en, a, f, pw, on, off, bits, S, L, B, R, out):
    a0, f0, pw0, en0 = S[S_A], S[S_F], S[S_PW], S[S_EN] > 0.5
    a1, f1, pw1, on1, off1, en1 = 0.0, f0, pw0, S[S_ON], S[S_OFF], False
    if not stop:
        # ceilings on the target: charge density at the proposed pulse width, unsafe regions
        tgt = a
        if tgt * pw / 1000.0 > L[L_QMAX]:
            tgt = L[L_QMAX] * 1000.0 / pw
            bits |= B_CHARGE
        c = _ceiling(f, S, R)
        if tgt > c:
            tgt = c
            bits |= B_REGION
        # ramps; no rise while disabled (never climb silently) or while input is stale
        a1 = tgt
        if tgt > a0:
            up = L[L_UP] * dt if (en0 and not stale) else 0.0
            if tgt > a0 + up:
                a1 = a0 + up
                bits |= B_STALE_HOLD if stale else B_RAMP
        elif tgt < a0 - L[L_DOWN] * dt:
            a1 = a0 - L[L_DOWN] * dt
            bits |= B_RAMP
        # while ramping down to a region's ceiling, stay at a frequency we are allowed at
        f1 = f
        if f != f0 and a1 > _ceiling(f, S, R):
            f1 = f0
            bits |= B_REGION
        # while ramping down for charge, shorten the pulse instead
        pw1 = pw
        if a1 * pw / 1000.0 > L[L_QMAX]:
            pw1 = max(L[L_QMAX] * 1000.0 / a1, L[L_PWMIN])
            bits |= B_CHARGE
        on1, off1 = on, off
        if on1 > L[L_ONMAX]:
            on1 = L[L_ONMAX]
        if off1 < on1 * L[L_OFF_RATIO]:
            off1 = on1 * L[L_OFF_RATIO]
        if want_en and en0:
            on1, off1 = S[S_ON], S[S_OFF]   # latched at the enable edge
            x = t - S[S_CYC]
            ahead = _on_upto(x + MAX_COMMAND_GAP_S, on1, on1 + off1) - _on_upto(x, on1, on1 + off1)
            if ahead > 0.0 and _window_on(t, S, L, B) + ahead > L[L_DUTY_ON_MAX]:
                bits |= B_DUTY_WINDOW
            else:
                en1 = True
        elif want_en:
            if on1 != on or off1 != off:
                bits |= B_DUTY_PARAMS
            if stale:
                bits |= B_STALE_HOLD
            elif t - S[S_LAST_ON_END] < S[S_LAST_ON_LEN] * L[L_OFF_RATIO]:
                bits |= B_DUTY_GAP
            elif _window_on(t, S, L, B) + min(MAX_COMMAND_GAP_S, on1) > L[L_DUTY_ON_MAX]:
                bits |= B_DUTY_WINDOW
            else:
                en1 = True
                S[S_CYC] = t

    # final envelope check, independent of how the values above were reached
    ok = (0.0 <= a1 <= L[L_AMAX] and L[L_FMIN] <= f1 <= L[L_FMAX]
          and L[L_PWMIN] <= pw1 <= L[L_PWMAX] and a1 * pw1 / 1000.0 <= L[L_QMAX] * (1 + 1e-9)
          and 0.0 < on1 <= L[L_ONMAX] and off1 >= on1 * L[L_OFF_RATIO] * (1 - 1e-12)
          and math.isfinite(off1)
          and a1 - a0 <= L[L_UP] * dt + 1e-9
          and (a0 - a1 <= L[L_DOWN] * dt + 1e-9 or (a1 == 0.0 and not en1)))
    if not ok:
        bits |= B_ENVELOPE
        a1, f1, pw1, on1, off1, en1 = 0.0, f0, pw0, S[S_ON], S[S_OFF], False
    if en0 and not en1:
        _disable(t, S)
    S[S_T], S[S_A], S[S_F], S[S_PW], S[S_ON], S[S_OFF] = t, a1, f1, pw1, on1, off1
    S[S_EN] = 1.0 if en1 else 0.0
    out[O_A], out[O_F], out[O_PW], out[O_ON], out[O_OFF] = a1, f1, pw1, on1, off1
    out[O_EN] = S[S_EN]
    return bits


# ---- the supervisor ---------------------------------------------------------------------------
@dataclass(frozen=True)
class UnsafeRegion:
    """Frequencies from low_Hz to high_Hz may not exceed amplitude_max_mA, nor the amplitude
    that gives charge_rate_max (amplitude x frequency, mA Hz)."""

    low_Hz: float
    high_Hz: float
    amplitude_max_mA: float
    charge_rate_max: float
    t: float
    what: str

    def contains(self, frequency_Hz: float) -> bool:
        return self.low_Hz <= frequency_Hz <= self.high_Hz


def _stim_dict(s: Stimulation) -> dict:
    return dataclasses.asdict(s)


class SafetySupervisor:
    """Owns the safety state; `guard` is the only way to make a Command."""

    def __init__(self, limits: SafetyLimits, t0: float):
        limits.validate()
        self.limits = limits
        t0 = float(t0)
        if not math.isfinite(t0):
            raise ValueError(f"t0 = {t0!r} must be finite")
        self._L = L = limits.as_array()
        self._S = S = np.full(N_STATE, np.nan)
        self._B = np.zeros(N_BUCKETS)
        self._R = np.zeros((MAX_UNSAFE_REGIONS, REGION_COLUMNS))
        self._p = np.zeros(6)
        self._out = np.zeros(6)
        on = min(OFF_DEFAULT.train_on_s, L[L_ONMAX])
        S[S_T], S[S_A], S[S_EN] = t0, 0.0, 0.0
        S[S_F] = min(max(OFF_DEFAULT.frequency_Hz, L[L_FMIN]), L[L_FMAX])
        S[S_PW] = min(max(OFF_DEFAULT.pulse_width_us, L[L_PWMIN]), L[L_PWMAX])
        S[S_ON], S[S_OFF] = on, max(OFF_DEFAULT.train_off_s, on * L[L_OFF_RATIO])
        S[S_STOPPED], S[S_LOCK], S[S_T0] = 0.0, -np.inf, t0
        S[S_CYC], S[S_LAST_ON_END], S[S_LAST_ON_LEN] = t0, -np.inf, 0.0
        S[S_ACC_T], S[S_BSEC], S[S_NREG] = t0, math.floor(t0), 0.0
        self._seq = 0
        self._prev_rr = float("nan")
        self._recent_rr: deque[float] = deque(maxlen=RECENT_BEATS)   # recent normal intervals, ms
        self.last = Command(0, t0, Stimulation.from_array(S[S_A:S_EN + 1]))
        self._last_out = S[S_A:S_EN + 1].tolist()
        self.unsafe_regions: list[UnsafeRegion] = []
        self._pending: list[Event] = []
        self._last_event_t: dict[int, float] = {}
        self._suppressed: dict[int, int] = {}
        _warm_up()

    # ---- state views ----
    @property
    def stopped(self) -> bool:
        """Operator STOP latched (only RESUME clears it)."""
        return bool(self._S[S_STOPPED] > 0.5)

    @property
    def lockout_until(self) -> float:
        return float(self._S[S_LOCK])

    def amplitude_ceiling(self, frequency_Hz: float, pulse_width_us: float | None = None) -> float:
        """The highest amplitude the supervisor would let out at this setting (for policies)."""
        pw = math.nan if pulse_width_us is None else float(pulse_width_us)
        return _amplitude_ceiling(float(frequency_Hz), pw, self._S, self._L, self._R)

    # ---- per tick ----
    def guard(self, t: float, proposal: Stimulation) -> tuple[Command, list[Event]]:
        p = self._p
        try:
            p[0] = proposal.amplitude_mA
            p[1] = proposal.frequency_Hz
            p[2] = proposal.pulse_width_us
            p[3] = proposal.train_on_s
            p[4] = proposal.train_off_s
            p[5] = 1.0 if proposal.enabled else 0.0
        except (AttributeError, TypeError, ValueError):
            p[:] = np.nan
        bits = _guard_kernel(_num(t), p, self._S, self._L, self._B, self._R, self._out, False)
        cmd = self._command()
        events, self._pending = self._pending, []
        if bits:
            events += self._events(cmd.t, bits, p, cmd)
        return cmd, events

    def heartbeat(self, t) -> Command:
        """Re-send the last setting with a new seq, through the same time-based rules (so a
        duty limit, a pause or stale input still stop it); its events come with the next guard."""
        p = self._p
        p[:] = self._S[S_A:S_EN + 1]
        bits = _guard_kernel(_num(t), p, self._S, self._L, self._B, self._R, self._out, True)
        cmd = self._command()
        if bits:
            self._pending += self._events(cmd.t, bits, p, cmd)
        return cmd

    # ---- immediate paths ----
    def on_beat(self, t: float, rr_ms: float) -> tuple[Command | None, list[Event]]:
        t, rr = _num(t), _num(rr_ms)
        if not (rr > 0.0 and math.isfinite(rr)):
            return None, []
        S = self._S
        if math.isfinite(t) and not (S[S_LAST_BEAT] >= t):
            S[S_LAST_BEAT] = t
        hr = 60000.0 / rr
        prev, self._prev_rr = self._prev_rr, rr
        if hr >= self.limits.bradycardia_hr_min_bpm and rr <= self.limits.rr_pause_max_s * 1000:
            self._recent_rr.append(rr)
            return None, []
        if self._compensatory(prev, rr):
            return None, []
        was_locked = t < S[S_LOCK]
        tt = float(_force_off(t, S, self._B))
        S[S_LOCK] = max(S[S_LOCK], tt + self.limits.lockout_s)
        cmd = self._command(off=True)
        events = []
        if not was_locked or tt - self._last_event_t.get(B_PAUSE, -np.inf) >= \
                self.limits.event_repeat_s:
            self._last_event_t[B_PAUSE] = tt
            events.append(Event(tt, "safety.bradycardia", "safety",
                                f"bradycardia: RR {rr:.0f} ms (HR {hr:.1f} bpm, limit "
                                f"{self.limits.bradycardia_hr_min_bpm:g} bpm / pause "
                                f"{self.limits.rr_pause_max_s:g} s); stopped, locked out until "
                                f"t = {S[S_LOCK]:.1f}",
                                {"rule": "bradycardia", "rr_ms": rr, "hr_bpm": hr,
                                 "lockout_until": float(S[S_LOCK]), "seq": cmd.seq,
                                 "after": _stim_dict(cmd.stim)}))
        return cmd, events

    def _compensatory(self, prev: float, rr: float) -> bool:
        """The long interval after a premature (ectopic) beat is not bradycardia: the pair
        spans about two normal beats. Pauses beyond the pause limit always count."""
        if rr > self.limits.rr_pause_max_s * 1000 or len(self._recent_rr) < 4:
            return False
        normal = float(np.median(self._recent_rr))
        return (prev < PREMATURE_RATIO * normal
                and prev + rr <= COMPENSATORY_PAIR_MAX * normal)

    def on_operator(self, t: float, text: str) -> tuple[Command | None, list[Event]]:
        word = str(text).strip().upper()
        if word == "STOP":
            cmd = self.operator_stop(t)
            return cmd, [self.operator_stop_event(cmd)]
        S = self._S
        t = _num(t) if math.isfinite(_num(t)) else float(S[S_T])
        if word == "RESUME":
            was = self.stopped
            S[S_STOPPED] = 0.0
            msg = ("operator RESUME: stimulation may restart, ramping from 0 mA" if was
                   else "operator RESUME while not stopped: nothing to do")
            return None, [Event(t, "safety.operator", "operator", msg,
                                {"rule": "operator", "marker": "RESUME", "was_stopped": was})]
        return None, [Event(t, "safety.operator", "operator",
                            f"unknown operator marker {text!r} ignored (STOP or RESUME)",
                            {"rule": "operator", "marker": str(text)})]

    def operator_stop(self, t: float) -> Command:
        """An operator STOP: off at once, latched until RESUME. The record of it is a separate
        call (`operator_stop_event`), so that a rig sends the command before building it."""
        S = self._S
        t = _num(t) if math.isfinite(_num(t)) else float(S[S_T])
        S[S_STOPPED] = 1.0
        _force_off(t, S, self._B)
        return self._command(off=True)

    @staticmethod
    def operator_stop_event(cmd: Command) -> Event:
        return Event(cmd.t, "safety.operator", "operator",
                     "operator STOP: stimulation off; only RESUME re-enables",
                     {"rule": "operator", "marker": "STOP", "seq": cmd.seq,
                      "after": _stim_dict(cmd.stim)})

    def on_side_effect(self, t: float, what: str) -> list[Event]:
        S, lim = self._S, self.limits
        t = _num(t) if math.isfinite(_num(t)) else float(S[S_T])
        a, f = float(S[S_A]), float(S[S_F])
        if a <= 0.0:
            return [Event(t, "safety.discomfort", "safety",
                          f"side effect {what!r} reported at 0 mA: nothing to step down",
                          {"rule": "discomfort", "what": what, "frequency_Hz": f})]
        ceiling = max(0.0, min(a - lim.discomfort_step_mA, a * lim.discomfort_factor))
        # Far above the reported frequency the ceiling alone can still be felt (the patient's
        # threshold in amplitude falls by up to a quarter from 20 to 30 Hz): the charge per
        # second at which the side effect came is a cap too.
        region = UnsafeRegion(f - lim.unsafe_region_below_Hz, lim.frequency_max_Hz, ceiling,
                              a * f, t, str(what))
        n = int(S[S_NREG])
        if n < MAX_UNSAFE_REGIONS:
            S[S_NREG] = n + 1
            self.unsafe_regions.append(region)
        else:  # full: merge into the nearest region, covering both at the lower ceiling
            n = int(np.argmin(np.abs(self._R[:, 0] - region.low_Hz)))
            old = self.unsafe_regions[n]
            region = UnsafeRegion(min(old.low_Hz, region.low_Hz), region.high_Hz,
                                  min(old.amplitude_max_mA, ceiling),
                                  min(old.charge_rate_max, region.charge_rate_max), t, str(what))
            self.unsafe_regions[n] = region
        self._R[n] = (region.low_Hz, region.high_Hz, region.amplitude_max_mA,
                      region.charge_rate_max)
        return [Event(t, "safety.discomfort", "safety",
                      f"side effect {what!r} at {a:.2f} mA, {f:g} Hz: amplitude steps down to "
                      f"{ceiling:.2f} mA; {region.low_Hz:g} to {region.high_Hz:g} Hz capped "
                      f"there and to {a * f:.1f} mA Hz",
                      {"rule": "discomfort", "what": what, "before_mA": a, "after_mA": ceiling,
                       "frequency_Hz": f,
                       "region": dataclasses.asdict(region)})]

    def on_signal(self, t: float, valid_beat_t: float | None, quality: float) -> None:
        beat_t = math.nan if valid_beat_t is None else _num(valid_beat_t)
        _signal(_num(t), beat_t, _num(quality), self._S, self._L)

    # ---- helpers ----
    def _command(self, off: bool = False) -> Command:
        self._seq += 1
        o = (self._S[S_A:S_EN + 1] if off else self._out).tolist()
        stim = self.last.stim
        # Most commands repeat the last setting: the same (frozen) object goes out again, so
        # that consumers can tell "unchanged" by identity.
        if o != self._last_out:
            stim = Stimulation(o[0], o[1], o[2], o[3], o[4], o[5] > 0.5)
            self._last_out = o
        self.last = Command(self._seq, float(self._S[S_T]), stim)
        return self.last

    def _events(self, t: float, bits: int, p: np.ndarray, cmd: Command) -> list[Event]:
        out = []
        for bit, (kind, rule, reason) in RULES.items():
            if not bits & bit:
                continue
            if t - self._last_event_t.get(bit, -np.inf) < self.limits.event_repeat_s:
                self._suppressed[bit] = self._suppressed.get(bit, 0) + 1
                continue
            self._last_event_t[bit] = t
            detail, extra = self._detail(bit, t, p, cmd.stim)
            out.append(Event(t, kind, "safety", reason + (f" ({detail})" if detail else ""),
                             {"rule": rule, "seq": cmd.seq,
                              "before": {k: _jsonable(v) for k, v in zip(_FIELDS, p.tolist())},
                              "after": _stim_dict(cmd.stim),
                              "suppressed_since_last": self._suppressed.pop(bit, 0), **extra}))
        return out

    def _detail(self, bit: int, t: float, p: np.ndarray, s: Stimulation) -> tuple[str, dict]:
        S, L, lim = self._S, self._L, self.limits
        if bit == B_CHARGE:
            q = p[0] * p[2] / 1000.0
            k = math.log10(q) + math.log10(q / lim.electrode_area_cm2) if q > 0 else -math.inf
            return (f"proposed {p[0]:g} mA x {p[2]:g} us = {q:.3g} uC, k = {k:.2f}, limit "
                    f"k < {lim.shannon_k_max:g} at {lim.electrode_area_cm2:g} cm2"), \
                {"k": _jsonable(k)}
        if bit == B_RAMP:
            return (f"proposed {p[0]:g} mA, sent {s.amplitude_mA:.3f} mA; up "
                    f"{lim.ramp_up_mA_per_s:g}, down {lim.ramp_down_mA_per_s:g} mA/s"), {}
        if bit in (B_AMPLITUDE, B_FREQUENCY, B_PULSE_WIDTH, B_BAD_NUMBER):
            return (f"amplitude {p[0]:g} mA in 0 to {L[L_AMAX]:g}, frequency {p[1]:g} Hz in "
                    f"{L[L_FMIN]:g} to {L[L_FMAX]:g}, pulse width {p[2]:g} us in "
                    f"{L[L_PWMIN]:g} to {L[L_PWMAX]:g}, train {p[3]:g}/{p[4]:g} s"), {}
        if bit == B_DUTY_GAP:
            need = S[S_LAST_ON_LEN] * L[L_OFF_RATIO]
            return (f"last ON {S[S_LAST_ON_LEN]:.2f} s ended {t - S[S_LAST_ON_END]:.2f} s ago, "
                    f"OFF must last {need:.2f} s"), {"off_needed_s": float(need)}
        if bit == B_DUTY_WINDOW:
            on = float(_window_on(t, S, L, self._B))
            return (f"{on:.1f} s ON in the last {lim.duty_window_s:g} s, limit "
                    f"{L[L_DUTY_ON_MAX]:g} s"), {"window_on_s": on}
        if bit == B_DUTY_PARAMS:
            return (f"train {p[3]:g} s ON / {p[4]:g} s OFF -> {s.train_on_s:g} / "
                    f"{s.train_off_s:g} s"), {}
        if bit in (B_STALE_HOLD, B_STALE_STOP, B_PAUSE):
            age = t - S[S_LAST_BEAT]
            return (f"last valid beat {age:.2f} s ago, quality {S[S_QUALITY]:.2f} "
                    f"(min {lim.quality_min:g})"), {"beat_age_s": float(age),
                                                    "quality": float(S[S_QUALITY])}
        if bit == B_LOCKOUT:
            return f"until t = {S[S_LOCK]:.1f}", {"lockout_until": float(S[S_LOCK])}
        if bit == B_REGION:
            return (f"ceiling {self.amplitude_ceiling(p[1]):.2f} mA at {p[1]:g} Hz",
                    {"ceiling_mA": self.amplitude_ceiling(p[1])})
        return "", {}


_FIELDS = tuple(f.name for f in dataclasses.fields(Stimulation))
OFF_DEFAULT = Stimulation()


def _jsonable(x: float) -> float | str:
    """Events go out as strict JSON, which has no NaN or infinity."""
    return x if math.isfinite(x) else repr(x)


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


_warm = False


def _warm_up() -> None:
    """Compile (or load from cache) the kernels before any loop starts."""
    global _warm
    if _warm:
        return
    L = SafetyLimits().as_array()
    S = np.zeros(N_STATE)
    S[S_ON], S[S_OFF], S[S_LOCK], S[S_LAST_BEAT], S[S_QLOW_SINCE] = 30, 300, -np.inf, 0, np.nan
    B, R, out = np.zeros(N_BUCKETS), np.zeros((MAX_UNSAFE_REGIONS, REGION_COLUMNS)), np.zeros(6)
    _guard_kernel(0.5, np.array([1.0, 20, 250, 30, 300, 1]), S, L, B, R, out, False)
    _signal(0.5, 0.5, 1.0, S, L)
    _amplitude_ceiling(20.0, 250.0, S, L, R)
    _force_off(1.0, S, B)
    _warm = True
