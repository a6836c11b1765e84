"""Adapter version names, in one place. Pure.

A version is 'base' (no adapter) or a positive number, stored as its decimal string ('3').
Users may write 'v3'. Sorting puts numbers first, in numeric order, then anything else.
"""
from __future__ import annotations

BASE = "base"


def normalize(version: str | None) -> str | None:
    """'v3' / '3' / ' 3 ' -> '3'; 'base' and other names stay; None and '' stay None."""
    if version is None:
        return None
    version = str(version).strip()
    if version == "":
        return None
    return version[1:] if version[:1] in "vV" and version[1:].isdigit() else version


def is_base(version: str | None) -> bool:
    """'base', '' and None all mean the base model."""
    return version in (None, "", BASE)


def number(version: str | None) -> int | None:
    """'base' (or None, '') -> 0, '3' / 'v3' -> 3, anything else -> None."""
    if is_base(version):
        return 0
    v = normalize(version)
    return int(v) if v is not None and v.isdigit() else None


def sort_key(version: str):
    """Numbers first in numeric order, then names ('base', 'unknown', ...) alphabetically."""
    return (0, int(version), version) if version.isdigit() else (1, 0, version)


def newest_first(versions) -> list[str]:
    """Numbered versions newest first, then 'base' and other names."""
    return sorted(versions, key=lambda v: (0, -int(v), v) if v.isdigit() else (1, 0, v))


def folder_name(version: int | str) -> str:
    """The registry's folder for a version: 'v3'."""
    return f"v{int(normalize(str(version)))}"
