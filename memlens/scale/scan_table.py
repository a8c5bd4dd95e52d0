"""Scan tables: what a streamed scan writes (a Parquet file with one row group per chunk, or
JSONL after a header line), read back as a :class:`ScanTable`, and the merge of a sharded scan's
tables into one (:func:`merge_scan_tables`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from memlens.core.errors import InputError
from memlens.core.io import atomic_path, check_output_file, parse_json
from memlens.core.lock import file_lock_path, locked

if TYPE_CHECKING:
    import pandas as pd

    from memlens.scale.shard import Shard

TABLE_KIND = "ScanTable"
TABLE_VERSION = 1
TABLE_SUFFIXES = (".parquet", ".jsonl")
COLUMNS = ("index", "id", "em", "nll", "extraction_logprob", "min_k_nll", "split", "sha")


@dataclass(frozen=True)
class ScanTable:
    """A streamed scan's table file (JSONL or Parquet) and its header: model, split, shard,
    thresholds, counts."""

    path: Path
    header: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> "ScanTable":
        """Read the header of a table written by :func:`scan_to_table` or :func:`merge_scan_tables`."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such scan table")
        if path.suffix.lower() == ".parquet":
            pq = pyarrow_parquet()
            try:
                meta = pq.read_schema(str(path)).metadata or {}
            except Exception as e:
                raise InputError(f"{path}: not a readable Parquet file ({e})") from None
            raw = meta.get(b"memlens")
            header = parse_json(raw.decode(), str(path)) if raw else None
        else:
            with path.open(encoding="utf-8") as f:
                first = f.readline()
            header = parse_json(first, f"{path}:1") if first.strip() else None
        if not isinstance(header, dict) or header.get("memlens") != TABLE_KIND:
            raise InputError(f"{path}: not a memlens scan table (written by `memlens scan ... --out X.parquet`)")
        if int(header.get("version", 0)) > TABLE_VERSION:
            raise InputError(f"{path}: scan table version {header['version']} is newer than this memlens reads; "
                             "upgrade memlens")
        return cls(path, header)

    @property
    def shard(self) -> "Shard":
        from memlens.scale.shard import Shard

        k, n = self.header.get("shard") or (0, 1)
        return Shard(k, n)

    def to_dataframe(self) -> "pd.DataFrame":
        """One row per paragraph: ``index`` (position in the input), ``id``, ``em``, ``nll``,
        ``extraction_logprob``, ``extraction_prob``, ``split``, ``sha`` (content hash)."""
        import numpy as np
        import pandas as pd

        if self.path.suffix.lower() == ".parquet":
            try:
                df = pyarrow_parquet().read_table(str(self.path)).to_pandas()
            except Exception as e:  # pyarrow's errors for a torn or damaged file
                raise InputError(f"{self.path}: a damaged Parquet table ({e}); scan it again") from None
        else:
            rows = []
            with self.path.open(encoding="utf-8", errors="replace") as f:
                next(f)
                for lineno, line in enumerate(f, start=2):
                    if line.strip():
                        row = parse_json(line, f"{self.path}:{lineno}", "the table is torn or damaged; scan it again")
                        if not isinstance(row, dict) or not set(COLUMNS) - {"min_k_nll"} <= set(row):
                            raise InputError(f"{self.path}:{lineno}: not a scan table row; the table is damaged, scan "
                                             "it again")
                        rows.append(row)
            df = pd.DataFrame(rows, columns=list(COLUMNS))
        n = self.header.get("n")
        if isinstance(n, int) and len(df) != n:
            raise InputError(f"{self.path}: holds {len(df)} rows, its header says {n}; the table is truncated or "
                             "damaged, scan it again")
        df["extraction_prob"] = np.exp(df["extraction_logprob"].astype("float64"))
        return df

    def summary(self) -> dict[str, Any]:
        """The header's counts: paragraphs, skipped, and each split's count and mean EM / NLL."""
        keys = ("model", "precision", "shard", "n", "skipped_short", "splits", "seconds", "paragraphs_per_second")
        return {k: self.header[k] for k in keys if k in self.header}


def split_summary(rows: Iterator[tuple[str, int, float]]) -> tuple[int, dict[str, Any]]:
    """The number of (split, em, nll) rows and each split's count, mean EM and mean NLL."""
    sums: dict[str, list[float]] = {s: [0, 0.0, 0.0] for s in ("memorized", "partly", "non_memorized")}
    for split, em, nll in rows:
        c = sums[split]
        c[0] += 1
        c[1] += em
        c[2] += nll
    n = int(sum(c[0] for c in sums.values()))
    return n, {s: {"count": int(c[0]), "mean_em": round(c[1] / c[0], 3) if c[0] else None,
                   "mean_nll": round(c[2] / c[0], 4) if c[0] else None} for s, c in sums.items()}


def write_table(target: Path, header: dict[str, Any], batches: Iterator[list[dict[str, Any]]]) -> None:
    """Write ``batches`` of rows as a Parquet (one row group per batch) or JSONL table, atomically."""
    with atomic_path(target) as tmp:
        if target.suffix.lower() == ".parquet":
            import pyarrow as pa

            pq = pyarrow_parquet()
            schema = pa.schema([("index", pa.int64()), ("id", pa.string()), ("em", pa.int32()), ("nll", pa.float64()),
                                ("extraction_logprob", pa.float64()), ("min_k_nll", pa.float64()), ("split", pa.string()),
                                ("sha", pa.string())],
                               metadata={"memlens": json.dumps(header)})
            with pq.ParquetWriter(str(tmp), schema) as writer:
                for rows in batches:
                    if rows:
                        writer.write_table(pa.Table.from_pylist(rows, schema=schema))
        else:
            with tmp.open("w", encoding="utf-8") as f:
                f.write(json.dumps(header) + "\n")
                for rows in batches:
                    f.writelines(json.dumps({k: r[k] for k in COLUMNS}) + "\n" for r in rows)


def merge_scan_tables(inputs: Sequence[str | Path], out: str | Path) -> ScanTable:
    """Join the shard tables of one scan into one table, in input order.

    Every shard ``0..N-1`` must be there exactly once, from the same model, source and settings,
    and no paragraph id may appear twice; otherwise nothing is written.

    Args:
        inputs: the shard tables (``scan.shard-*-of-N.parquet``).
        out: the merged table (``.parquet`` or ``.jsonl``).

    Returns:
        The merged :class:`ScanTable`.
    """
    import pandas as pd

    tables = [ScanTable.open(p) for p in inputs]
    if not tables:
        raise InputError("nothing to merge: give the shard tables (scan.shard-*-of-N.parquet)")
    target = Path(out)
    if target.suffix.lower() not in TABLE_SUFFIXES:
        raise InputError(f"{target}: a scan table ends in .parquet or .jsonl")
    if any(target.resolve() == t.path.resolve() for t in tables):
        raise InputError(f"--out {target} is one of the shards; choose another output file")
    check_output_file(target, "merged scan table")
    same = ("model", "source", "source_sha256", "prefix_len", "continuation_len", "chunk_size",
            "non_memorized_max_em", "memorized_min_em", "precision")
    first = tables[0]
    for t in tables[1:]:
        diff = [k for k in same if t.header.get(k) != first.header.get(k)]
        if diff == ["source_sha256"]:
            raise InputError(f"{t.path} and {first.path} scanned different versions of {first.header.get('source')} "
                             "(the file changed between the shards' scans); scan every shard of the current file again")
        if diff:
            raise InputError(f"{t.path} is not a shard of the same scan as {first.path} (differs in "
                             f"{', '.join(diff)})")
    worlds = {t.path: t.shard.world for t in tables}
    if len(set(worlds.values())) > 1:
        said = "; ".join(f"{path} is {'a whole table' if w == 1 else f'a shard of {w}'}" for path, w in worlds.items())
        raise InputError(f"these tables are not the shards of one sharded scan ({said}); merge the shards of one "
                         "--shard k/N scan, all with the same N")
    world = first.shard.world
    ranks = sorted(t.shard.rank for t in tables)
    if ranks != list(range(world)):
        missing = sorted(set(range(world)) - set(ranks))
        dup = sorted({r for r in ranks if ranks.count(r) > 1})
        raise InputError(f"the shards do not cover 0..{world - 1} exactly once (missing {missing}, twice {dup}); "
                         "scan the missing shards or drop the duplicates")
    df = pd.concat([t.to_dataframe() for t in tables], ignore_index=True).sort_values("index", kind="stable")
    if df["id"].duplicated().any():
        dup_id = df.loc[df["id"].duplicated(), "id"].iloc[0]
        raise InputError(f"paragraph id {dup_id!r} occurs in more than one row; ids must be unique across the input")
    header = {k: first.header[k] for k in ("memlens", "version", *same) if k in first.header}
    header |= {"shard": [0, 1], "merged_from": [str(t.path) for t in tables],
               "seconds": round(sum(float(t.header.get("seconds") or 0) for t in tables), 2),
               "n": len(df), "skipped_short": sum(int(t.header.get("skipped_short", 0)) for t in tables)}
    _, header["splits"] = split_summary(zip(df["split"], df["em"].astype(int), df["nll"].astype(float)))
    rows = df[list(COLUMNS)].to_dict("records")
    with locked(file_lock_path(target), f"the merged scan table {target}"):
        write_table(target, header, iter([[{k: (int(v) if k in ("index", "em") else v) for k, v in r.items()}
                                            for r in rows]]))
    return ScanTable(target, header)


def pyarrow_parquet() -> Any:
    """``pyarrow.parquet``, or an :class:`InputError` that says how to get it."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("Parquet files need pyarrow: pip install pyarrow (or write a .jsonl table)") from None
    return pq
