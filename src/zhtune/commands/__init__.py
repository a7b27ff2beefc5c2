"""The CLI's sub-commands; each module registers its commands on the app."""
from __future__ import annotations

from typing import Sequence


def split_list(values: str | Sequence[str] | None) -> list[str] | None:
    """Comma-separated option values (one string, or a repeated option's strings) as one list;
    None when nothing is left after dropping blanks."""
    if values is None:
        return None
    items = [values] if isinstance(values, str) else values
    out = [v.strip() for item in items for v in item.split(",") if v.strip()]
    return out or None
