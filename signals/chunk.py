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
