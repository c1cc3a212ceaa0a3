"""Random access to the rows of one snapshot, by position (for training data loaders).

Row ``i`` is the ``i``-th live row in the order :meth:`LocalRunner.read_all` returns them
without a filter. The position is mapped to (file, physical row) from the manifest's row
counts and the deletion vectors alone; record-field values are then read through their
references, straight from the ArrayRecord files. Each file's references and small columns are
loaded once, on first use, and kept.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from spacesql.engine.files import read_deletes
from spacesql.engine.records import RecordReader, place
from spacesql.engine.scan import Scanner

__all__ = ["RandomAccess"]


class RandomAccess:
    """Map-style access to a snapshot: ``len(ra)``, ``ra[i]`` and ``ra.take(indices)``.

    Args:
        scanner: The snapshot to read.
        fields: Columns to return (default: all).
    """

    def __init__(self, scanner: Scanner, fields: Sequence[str] | None = None) -> None:
        self._scanner = scanner
        self.fields = scanner._fields(fields)
        self._entries = [e for e in scanner.state.files.values() if e.live_rows > 0]
        counts = np.array([e.live_rows for e in self._entries], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self._live: dict[int, np.ndarray | None] = {}
        self._columns: dict[int, pa.Table] = {}
        self._refs: dict[tuple[int, str], tuple[np.ndarray, list[str], np.ndarray]] = {}
        self._reader = RecordReader(str(scanner.store.root))
        self._plain = [f for f in self.fields if f not in scanner.record_fields]
        self._records = [f for f in self.fields if f in scanner.record_fields]

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self)
        row: dict[str, Any] = self.take([index]).to_pylist()[0]
        return row

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> RandomAccess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _physical(self, k: int, local: np.ndarray) -> np.ndarray:
        if k not in self._live:
            entry = self._entries[k]
            if entry.deletion_file is None:
                self._live[k] = None
            else:
                mask = read_deletes(self._scanner.store, entry).live_mask(entry.num_rows)
                self._live[k] = np.flatnonzero(mask)
        live = self._live[k]
        return local if live is None else live[local]

    def _plain_columns(self, k: int) -> pa.Table:
        table = self._columns.get(k)
        if table is None:
            path = self._scanner.store.abs(self._entries[k].path)
            table = pq.read_table(path, columns=self._plain, schema=self._scanner.physical)
            self._columns[k] = table
        return table

    def _references(self, k: int, field: str) -> tuple[np.ndarray, list[str], np.ndarray]:
        key = (k, field)
        refs = self._refs.get(key)
        if refs is None:
            path = self._scanner.store.abs(self._entries[k].path)
            col = pq.read_table(path, columns=[field]).column(field).combine_chunks()
            files = col.field("file").dictionary_encode()
            codes = files.indices.to_numpy(zero_copy_only=False)
            rows = col.field("row").to_numpy(zero_copy_only=False)
            valid = col.is_valid().to_numpy(zero_copy_only=False)
            codes = np.where(valid, np.nan_to_num(codes, nan=-1), -1).astype(np.int64)
            refs = (
                codes,
                files.dictionary.to_pylist(),
                np.nan_to_num(rows, nan=-1).astype(np.int64),
            )
            self._refs[key] = refs
        return refs

    def take(self, indices: Sequence[int] | np.ndarray) -> pa.Table:
        """Rows at the given positions, in the given order (repeats allowed)."""
        idx = np.asarray(indices, dtype=np.int64)
        n = len(self)
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            bad = int(idx[(idx < 0) | (idx >= n)][0])
            raise IndexError(f"Row {bad} is out of range: the snapshot has {n} rows.")
        file_of = np.searchsorted(self._starts, idx, side="right") - 1
        schema = self._scanner.schema
        out_cols: dict[str, list[Any]] = {}
        order = np.argsort(file_of, kind="stable")
        pieces: dict[str, list[pa.Array]] = defaultdict(list)
        # per record field: values in read order, and the output row of each
        record_values: dict[str, list[Any]] = {f: [] for f in self._records}
        record_rows: dict[str, list[np.ndarray]] = {f: [] for f in self._records}
        for k in np.unique(file_of):
            sel = order[file_of[order] == k]
            phys = self._physical(int(k), idx[sel] - self._starts[k])
            if self._plain:
                part = self._plain_columns(int(k)).take(pa.array(phys))
                for f in self._plain:
                    pieces[f].append(part.column(f).combine_chunks())
            for f in self._records:
                codes, files, rows = self._references(int(k), f)
                c, r = codes[phys], rows[phys]
                for code in np.unique(c[c >= 0]):
                    hit = np.flatnonzero(c == code)
                    record_values[f].extend(
                        self._reader.read_positions(files[int(code)], r[hit].tolist())
                    )
                    record_rows[f].append(sel[hit])
        inverse = np.empty(len(idx), dtype=np.int64)
        inverse[order] = np.arange(len(idx))
        for f in self.fields:
            typ = schema.field(f).type
            if f in self._records:
                rows_of = np.concatenate(record_rows[f]) if record_rows[f] else np.empty(0, int)
                out_cols[f] = place(record_values[f], rows_of, len(idx), typ)
            else:
                arr = pa.concat_arrays(pieces[f]) if pieces[f] else pa.array([], type=typ)
                out_cols[f] = arr.take(pa.array(inverse)).cast(typ)
        return pa.table(out_cols, schema=pa.schema([schema.field(f) for f in self.fields]))
