"""The unit every source yields and every processor consumes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Chunk:
    """Samples of one input stream.

    `role` is the controller's name for the input ("ecg", "rr", "resp", "eda", "ratings",
    "operator"); `data` is (n, channels) float64 for numeric streams or a list of str for
    markers; `timestamps` is (n,) float64 in the LSL clock domain.
    """

    role: str
    data: np.ndarray | list
    timestamps: np.ndarray

    def __len__(self) -> int:
        return len(self.timestamps)


def one_channel(proc, x, t) -> tuple[np.ndarray, np.ndarray]:
    """The processor's channel of a chunk as contiguous float64, with its time stamps.

    `proc` has `channel`, `_n_channels` and `reset()`: a change in the channel count is a new
    input format, so its state starts over."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        if proc._n_channels is not None and x.shape[1] != proc._n_channels:
            proc.reset()
        proc._n_channels = x.shape[1]
        x = x[:, proc.channel]
    x = np.ascontiguousarray(x)
    t = np.ascontiguousarray(t, dtype=np.float64)
    if len(t) != len(x):   # the kernels do no bounds checks
        raise ValueError(f"{len(x)} samples but {len(t)} time stamps")
    return x, t
