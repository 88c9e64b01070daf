"""How every command ends: a short summary table, then (with --json) one JSON object as the
last line of output, so that scripts can read it."""
from __future__ import annotations

import json
import math
import sys
from typing import Any, Iterable


def _clean(x: Any) -> Any:
    """JSON has no NaN or inf: they become null; numpy scalars and arrays become Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "tolist"):
        return _clean(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def format_table(rows: Iterable[tuple[str, Any]], title: str | None = None) -> str:
    rows = [(str(k), _fmt(v)) for k, v in rows]
    width = max((len(k) for k, _ in rows), default=0)
    lines = [title, "-" * len(title)] if title else []
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def emit(result: dict[str, Any], as_json: bool, title: str | None = None,
         table_keys: Iterable[str] | None = None) -> None:
    """Print the summary table of `result` (or of `table_keys`), then the JSON line."""
    keys = list(table_keys) if table_keys is not None else [
        k for k, v in result.items() if not isinstance(v, (dict, list))]
    print(format_table([(k, result.get(k)) for k in keys], title))
    if as_json:
        sys.stdout.flush()
        print(json.dumps(_clean(result), allow_nan=False))


def progress(message: str) -> None:
    """Progress of long runs goes to stderr so that stdout stays one JSON line at the end."""
    print(message, file=sys.stderr, flush=True)
