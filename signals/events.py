"""Events: everything worth telling an operator (stream loss, clock reset, rejected rating,
safety intervention, policy decision) is one `Event`, published on `vnsloop-events` as JSON."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    t: float            # LSL clock domain, seconds
    kind: str           # dotted, e.g. "stream.lost", "clock.reset", "rating.rejected", "safety.ramp"
    source: str         # stream or component that raised it
    message: str        # one line a person can read
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"t": self.t, "kind": self.kind, "source": self.source,
                "message": self.message, "data": self.data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), default=_jsonable, allow_nan=False)


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)
