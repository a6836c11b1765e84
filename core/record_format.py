"""How a record of core/records.py is stored: the kind of each field (its Redis string and its
Arrow type) and the Record base class that writes and reads a hash, a stream entry or an archive
row from them. Pure."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

# Field kinds: how a value is written to Redis and which Arrow type holds it in the archive.
STR, INT, FLOAT, JSON, INTS, FLOATS, STRS = "str", "int", "float", "json", "ints", "floats", "strs"


def col(kind: str, help: str):
    return field(default=None, metadata={"kind": kind, "help": help})


def _arrow_type(kind: str):
    import pyarrow as pa
    return {STR: pa.string(), INT: pa.int64(), FLOAT: pa.float64(), JSON: pa.string(), INTS: pa.list_(pa.int32()),
            FLOATS: pa.list_(pa.float64()), STRS: pa.list_(pa.string())}[kind]


def _encode(kind: str, v) -> str:
    if kind == STR:
        return v
    if kind == FLOAT:
        return repr(float(v))
    if kind == INT:
        return str(int(v))
    return json.dumps(v)


def _decode(kind: str, raw: str):
    """The typed value of a stored string; ValueError/TypeError when it is not one."""
    if kind == STR:
        return raw
    if kind == FLOAT:
        return float(raw)
    if kind == INT:
        x = float(raw)
        if not x.is_integer():
            raise ValueError(raw)
        return int(x)
    v = json.loads(raw)
    if kind == INTS:
        return [int(x) for x in v]
    if kind == FLOATS:
        return [float(x) for x in v]
    if kind == STRS:
        return [str(x) for x in v]
    return v


@dataclass(frozen=True, kw_only=True)
class Record:
    TABLE: ClassVar[str] = ""
    ID: ClassVar[str] = ""
    SCHEMA_VERSION: ClassVar[int] = 1
    NOT_IN_HASH: ClassVar[tuple[str, ...]] = ()  # fields stored beside the hash (a stream id, a list)

    extra: dict = field(default_factory=dict, metadata={"kind": "extra", "help": "fields this class does not name, "
                                                                              "and values that did not parse, as stored"})

    @classmethod
    def columns(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if f.name != "extra"]

    @property
    def id(self) -> str:
        return getattr(self, self.ID)

    # --- Redis -----------------------------------------------------------------------------
    def to_redis(self) -> dict[str, str]:
        """The hash (or stream entry) fields, as the writer stores them."""
        out = {}
        for f in self.columns():
            v = getattr(self, f.name)
            if v is not None and f.name not in self.NOT_IN_HASH:
                out[f.name] = _encode(f.metadata["kind"], v)
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out

    @classmethod
    def from_redis(cls, h: Mapping, **beside):
        """From a hash or stream entry (str or bytes); `beside`: the fields not in it (NOT_IN_HASH)."""
        h = {_s(k): _s(v) for k, v in h.items()}
        values, extra = dict(beside), {}
        kinds = {f.name: f.metadata["kind"] for f in cls.columns()}
        for k, raw in h.items():
            kind = kinds.get(k)
            if kind is None or k in beside:
                extra[k] = raw
                continue
            try:
                values[k] = _decode(kind, raw)
            except (ValueError, TypeError):
                extra[k] = raw  # kept as stored: readers decide whether they can do without it
        return cls(**values, extra=extra)

    # --- the archive -------------------------------------------------------------------------
    @classmethod
    def arrow_schema(cls):
        import pyarrow as pa
        fields = [pa.field(f.name, _arrow_type(f.metadata["kind"])) for f in cls.columns()]
        fields.append(pa.field("extra", pa.string()))
        meta = {"rewardloop.table": cls.TABLE, "rewardloop.record": cls.__name__,
                "rewardloop.schema_version": str(cls.SCHEMA_VERSION), "rewardloop.id": cls.ID}
        return pa.schema(fields, metadata=meta)

    def to_row(self) -> dict:
        row = {}
        for f in self.columns():
            v = getattr(self, f.name)
            row[f.name] = json.dumps(v) if f.metadata["kind"] == JSON and v is not None else v
        row["extra"] = json.dumps(self.extra) if self.extra else None
        return row

    @classmethod
    def from_row(cls, row: Mapping):
        extra = json.loads(row["extra"]) if row.get("extra") else {}
        values = {}
        for f in cls.columns():
            v = row.get(f.name)
            if v is not None and f.metadata["kind"] == JSON:
                v = json.loads(v)
            elif v is None and isinstance(extra.get(f.name), str):  # written before the field was named
                try:
                    v = _decode(f.metadata["kind"], extra[f.name])
                    del extra[f.name]
                except (ValueError, TypeError):
                    pass
            values[f.name] = v
        return cls(**values, extra=extra)


def _s(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)
