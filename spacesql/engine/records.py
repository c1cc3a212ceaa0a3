"""Record fields: bulky binary values kept in ArrayRecord files, referenced from Parquet.

In the Parquet index file a record field is a column of references
``struct<file: string, row: int64>`` (file relative to the dataset root); a null value is a
null reference. The references are the source of truth, so compaction can rewrite index files
without copying records.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa

from spacesql.errors import FormatError, MissingDependencyError

__all__ = ["REFERENCE_TYPE", "RecordReader", "write_records"]

REFERENCE_TYPE = pa.struct([("file", pa.string()), ("row", pa.int64())])


def _module() -> Any:
    try:
        from array_record.python import array_record_module
    except ImportError as exc:  # pragma: no cover - array-record is a core dependency
        raise MissingDependencyError(
            "Record fields need the ArrayRecord library: pip install array-record."
        ) from exc
    return array_record_module


def write_records(root: str, rel_path: str, values: pa.Array, *, group_size: int) -> pa.Array:
    """Write the non-null values to a new ArrayRecord file; return their references."""
    module = _module()
    full = os.path.join(root, rel_path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    writer = module.ArrayRecordWriter(full, f"group_size:{group_size}")
    rows: list[int | None] = []
    n = 0
    try:
        for value in values.to_pylist():
            if value is None:
                rows.append(None)
                continue
            writer.write(value)
            rows.append(n)
            n += 1
    finally:
        writer.close()
    row_arr = pa.array(rows, type=pa.int64())
    file_arr = pa.array([rel_path] * len(rows), type=pa.string())
    mask = row_arr.is_null()
    return pa.StructArray.from_arrays([file_arr, row_arr], fields=list(REFERENCE_TYPE), mask=mask)


def place(values: list[bytes], rows: np.ndarray, n: int, out_type: pa.DataType) -> pa.Array:
    """An array of ``n`` values where ``values[i]`` goes to row ``rows[i]``; other rows null.

    Built from one joined buffer and an offsets array: the bytes are copied once, several
    times faster than ``pa.array`` for large values (images, audio).
    """
    source = np.full(n, -1, dtype=np.int64)
    source[rows] = np.arange(len(rows))
    valid = source >= 0
    ordered = [values[i] for i in source[valid].tolist()]
    lengths = np.zeros(n, dtype=np.int64)
    lengths[valid] = np.fromiter(map(len, ordered), dtype=np.int64, count=len(ordered))
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    large = pa.types.is_large_binary(out_type)
    if not large and offsets[-1] >= 2**31:  # too big for 32-bit offsets: let Arrow cope
        return pa.array([values[i] if i >= 0 else None for i in source.tolist()], out_type)
    validity = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    buffers = [
        validity,
        pa.py_buffer(offsets if large else offsets.astype(np.int32)),
        pa.py_buffer(b"".join(ordered)),
    ]
    return pa.Array.from_buffers(out_type, n, buffers)


class RecordReader:
    """Reads records through references, keeping ArrayRecord readers open."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._readers: dict[str, Any] = {}

    def _reader(self, rel: str) -> Any:
        reader = self._readers.get(rel)
        if reader is None:
            full = os.path.join(self.root, rel)
            if not os.path.exists(full):
                raise FormatError(
                    f"Record file {rel!r} referenced by the dataset is missing; the dataset "
                    "was copied incompletely or damaged."
                )
            reader = _module().ArrayRecordReader(full)
            self._readers[rel] = reader
        return reader

    def read(self, refs: pa.Array | pa.ChunkedArray, out_type: pa.DataType) -> pa.Array:
        """Values for a column of references, in order (null reference -> null value)."""
        if isinstance(refs, pa.ChunkedArray):
            refs = refs.combine_chunks() if refs.num_chunks != 1 else refs.chunk(0)
        if len(refs) == 0:
            return pa.array([], type=out_type)
        files = refs.field("file")
        rows = refs.field("row").to_numpy(zero_copy_only=False)
        valid = refs.is_valid().to_numpy(zero_copy_only=False)
        groups: dict[str, list[int]] = defaultdict(list)
        for i, f in enumerate(files.to_pylist()):
            if valid[i]:
                groups[f].append(i)
        values: list[bytes] = []
        order: list[int] = []
        for f, idx in groups.items():
            values.extend(self._reader(f).read([int(x) for x in np.asarray(rows)[idx]]))
            order.extend(idx)
        return place(values, np.asarray(order, dtype=np.int64), len(refs), out_type)

    def read_positions(self, rel: str, positions: list[int]) -> list[bytes]:
        return list(self._reader(rel).read(positions))

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()
