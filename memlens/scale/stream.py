"""Scanning inputs of any size: paragraphs are read in chunks, scored, and streamed to a JSONL or
Parquet table, so memory stays flat in the number of paragraphs; static sharding spreads the
chunks over processes (``--shard k/N``, or the rank of torchrun / SLURM) and
:func:`merge_scan_tables` joins the shards.

Each finished chunk is written, atomically, as one part file under ``<out>.parts/`` together
with a hash of its paragraphs' tokens; a killed scan resumes at the first chunk without a valid
part, so nothing is lost or scored twice, and a chunk whose content changed is scored again.
The table itself appears, atomically, only when every chunk of the shard is done.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from memlens.core.progress import tqdm

from memlens.analyses.scan import DEFAULT_BATCH_SIZE
from memlens.core.defaults import DEFAULT_CONTINUATION_LEN, DEFAULT_PREFIX_LEN, MIN_K
from memlens.core.data import (ParagraphSet, check_fits_context,
                                check_token_ids)
from memlens.core.errors import InputError
from memlens.core.io import check_output_file, parse_json, write_text_atomic
from memlens.core.lock import file_lock_path, locked
from memlens.scale.shard import Shard
from memlens.core.precision import with_precision
from memlens.scale.scan_table import (
    TABLE_KIND, TABLE_SUFFIXES, TABLE_VERSION, ScanTable, pyarrow_parquet, split_summary, write_table,
)

if TYPE_CHECKING:

    from memlens.core.model import HookedModel

DEFAULT_CHUNK_SIZE = 1024


@dataclass
class Chunk:
    """``number``-th block of ``chunk_size`` input records: the paragraphs kept, their positions
    in the input, and how many were skipped as too short."""

    number: int
    paragraphs: ParagraphSet | None
    indices: list[int] = field(default_factory=list)
    skipped: int = 0

    @property
    def content_hash(self) -> str:
        """Hash of the chunk's ids and tokens: a part is reused only for the same content."""
        from memlens.analyses.scan import content_hashes

        if self.paragraphs is None:
            return "empty"
        h = hashlib.sha256()
        for pid, sha in zip(self.paragraphs.ids, content_hashes(self.paragraphs.tokens)):
            h.update(f"{pid}\0{sha}\n".encode())
        return h.hexdigest()[:16]


def iter_records(path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[tuple[int, dict[str, Any]]]:
    """The paragraph records of a JSONL or Parquet file, one at a time, each with its line (JSONL)
    or row (Parquet) number, from 1; a ParagraphSet header line is skipped."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise InputError(f"{path}: no such paragraph file")
    if suffix == ".parquet":
        pq = pyarrow_parquet()
        try:
            pf = pq.ParquetFile(str(path))
        except Exception as e:
            raise InputError(f"{path}: not a readable Parquet file ({e})") from None
        names = set(pf.schema_arrow.names)
        if not names & {"tokens", "text"}:
            raise InputError(f"{path}: needs a 'tokens' (list of integers) or 'text' column; it has {sorted(names)}")
        row = 0
        for batch in pf.iter_batches(batch_size=chunk_size):
            for rec in batch.to_pylist():
                row += 1
                yield row, rec
        return
    if suffix == ".csv":
        raise InputError(f"{path}: a streaming scan reads JSONL or Parquet; scan a CSV in memory (an --out "
                         "ending in .safetensors, no --shard) or convert it to JSONL")
    with path.open("rb") as f:
        offset = 0
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{lineno}: not UTF-8 text (byte {offset + e.start} of the file, column "
                                 f"{e.start + 1} of the line); convert the file to UTF-8") from None
            offset += len(raw)
            if not line.strip():
                continue
            rec = parse_json(line, f"{path}:{lineno}", "fix or remove the line")
            if isinstance(rec, dict) and rec.get("memlens") == "ParagraphSet":
                continue
            if not isinstance(rec, dict) or ("tokens" not in rec and "text" not in rec):
                raise InputError(f"{path}:{lineno}: each line must be a JSON object with a 'tokens' list or a "
                                 "'text' string")
            yield lineno, rec


def check_records(path: Path) -> int:
    """Read every record of a JSONL or Parquet paragraph file once and check what the local
    engine checks chunk by chunk: ``tokens`` a list of integer ids in range (or ``text`` a
    string) and ids unique (by 64-bit hashes). Returns the number of records; an
    :class:`InputError` names the line or row of the first bad one."""
    seen: dict[int, int] = {}
    n = 0
    for lineno, rec in iter_records(path):
        n += 1
        pid = str(rec.get("id", n - 1))
        where = f"{path}:{lineno} (paragraph {pid!r})"
        toks = rec.get("tokens")
        if toks is not None and not isinstance(toks, str):
            check_token_ids(toks, where)
        elif not isinstance(rec.get("text"), str):
            raise InputError(f"{where}: 'text' must be a string")
        key = id_key(pid)
        if key in seen:
            raise InputError(f"{where}: paragraph id {pid!r} occurs more than once (first at line or row "
                             f"{seen[key]}); ids must be unique")
        seen[key] = lineno
    if n == 0:
        raise InputError(f"{path}: the file holds no paragraphs")
    return n


def id_key(paragraph_id: str) -> int:
    """A 64-bit hash of a paragraph id: how a streamed scan remembers the ids it has seen
    (about 60 MB per million) to refuse duplicates."""
    return int.from_bytes(hashlib.blake2b(paragraph_id.encode(), digest_size=8).digest(), "little")


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes (read in 1 MiB blocks): what a scan table records of its
    source, so that shards of different versions of a file are not merged."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def iter_chunks(
    path: str | Path, model: "HookedModel | None", prefix_len: int = DEFAULT_PREFIX_LEN,
    continuation_len: int = DEFAULT_CONTINUATION_LEN, chunk_size: int = DEFAULT_CHUNK_SIZE,
    shard: Shard = Shard(), skip_short: bool = False,
) -> Iterator[Chunk]:
    """The input in chunks of ``chunk_size`` records; only the shard's own chunks are tokenized
    (the others are read past, as lines or record batches)."""
    path = Path(path)
    if chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    block: list[tuple[int, dict[str, Any]]] = []
    number, start = 0, 0
    for lineno, rec in iter_records(path, chunk_size):
        block.append((lineno, rec))
        if len(block) == chunk_size:
            if shard.owns(number):
                yield _chunk(block, number, start, path, model, prefix_len, continuation_len, skip_short)
            number, start, block = number + 1, start + len(block), []
    if block and shard.owns(number):
        yield _chunk(block, number, start, path, model, prefix_len, continuation_len, skip_short)
    if number == 0 and not block:
        raise InputError(f"{path}: the file holds no paragraphs")


def _chunk(rows: list[tuple[int, dict[str, Any]]], number: int, start: int, path: Path,
           model: "HookedModel | None", prefix_len: int, continuation_len: int, skip_short: bool) -> Chunk:
    for i, (_, rec) in enumerate(rows):
        rec.setdefault("id", str(start + i))  # ids default to the position in the whole input, not in the chunk
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skipped paragraphs are counted, not warned about chunk by chunk
        paras = ParagraphSet._from_rows(rows, path, model, prefix_len, continuation_len, skip_short=skip_short,
                                        allow_empty=True)
    if paras is None:
        return Chunk(number, None, [], len(rows))
    index_of = {str(rec["id"]): start + i for i, (_, rec) in enumerate(rows)}
    return Chunk(number, paras, [index_of[pid] for pid in paras.ids], len(paras.skipped))


def table_target(source: str | Path, out: str | Path, shard: Shard = Shard()) -> Path:
    """The table a (shard of a) streamed scan of ``source`` writes for ``out``, checked before
    any work: a .parquet or .jsonl name, not the input itself, writable. Raises
    :class:`InputError` saying what is wrong."""
    target = shard.output_path(Path(out))
    if target.suffix.lower() not in TABLE_SUFFIXES:
        raise InputError(f"{target}: a scan table ends in .parquet or .jsonl")
    if target.resolve() == Path(source).resolve():
        raise InputError(f"--out {target} is the paragraph file itself; choose another output file")
    check_output_file(target, "scan table")
    if target.suffix.lower() == ".parquet":
        pyarrow_parquet()
    return target


@with_precision
def scan_to_table(
    model: "HookedModel",
    source: str | Path,
    out: str | Path,
    *,
    prefix_len: int = DEFAULT_PREFIX_LEN,
    continuation_len: int = DEFAULT_CONTINUATION_LEN,
    batch_size: int = DEFAULT_BATCH_SIZE,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    shard: Shard | str | None = None,
    skip_short: bool = False,
    non_memorized_max_em: int | None = None,
    memorized_min_em: int | None = None,
    min_k: float = MIN_K,
    progress: bool = True,
) -> ScanTable:
    """Scan a JSONL or Parquet paragraph file of any size into a table (``out`` ending in
    ``.parquet`` or ``.jsonl``), chunk by chunk: memory does not grow with the input.

    Args:
        model: the model.
        source: a JSONL or Parquet file (``id`` and ``tokens`` or ``text`` per record).
        out: the table to write; with a shard of several, the shard's tag is added to the name
            (``scan.shard-1-of-4.parquet``) unless it is there already.
        prefix_len, continuation_len: the split of each paragraph (tokens).
        batch_size: paragraphs per forward pass.
        chunk_size: input records per chunk (the unit of resumption and of sharding).
        shard: this process's part (``Shard``, ``"k/N"``, ``"auto"``); default: the whole input.
        skip_short: leave out (and count) paragraphs shorter than the split instead of failing.
        non_memorized_max_em, memorized_min_em: the split thresholds (paper: 10, and all).
        min_k: the share of continuation tokens in the ``min_k_nll`` column.
        progress: show a progress bar.

    Returns:
        The :class:`ScanTable` written (EM in tokens, NLL in nats per token, extraction
        log-probability in nats).
    """
    from memlens.analyses.scan import split_thresholds
    from memlens.core.metrics import check_min_k

    source = Path(source)
    shard = Shard.parse(shard) if isinstance(shard, str) else (shard or Shard())
    target = table_target(source, out, shard)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    non_max, mem_min = split_thresholds(continuation_len, non_memorized_max_em, memorized_min_em)
    check_min_k(min_k)
    check_fits_context(prefix_len, continuation_len, model.n_ctx)  # before the parts folder exists
    header = {"memlens": TABLE_KIND, "version": TABLE_VERSION, "model": model.name, "source": str(source.resolve()),
              "prefix_len": prefix_len, "continuation_len": continuation_len, "chunk_size": chunk_size,
              "shard": [shard.rank, shard.world], "non_memorized_max_em": non_max, "memorized_min_em": mem_min,
              "min_k": min_k, "precision": model.precision}
    parts = target.with_name(target.name + ".parts")
    with locked(file_lock_path(target), f"the scan table {target}"):
        fresh = not parts.exists()
        _open_parts(parts, header)
        try:
            table = _score_chunks(model, source, target, shard, parts, header, batch_size, chunk_size, skip_short,
                                  non_max, mem_min, min_k, progress)
        except InputError:
            if fresh and not any(parts.glob("part-*.jsonl")):
                shutil.rmtree(parts, ignore_errors=True)  # a refused input leaves nothing that blocks the corrected command
            raise
        shutil.rmtree(parts, ignore_errors=True)
        return table


def _score_chunks(model: "HookedModel", source: Path, target: Path, shard: Shard, parts: Path, header: dict[str, Any],
                  batch_size: int, chunk_size: int, skip_short: bool, non_max: int, mem_min: int, min_k: float,
                  progress: bool) -> ScanTable:
    from memlens.analyses.scan import score_batch
    from memlens.core.results import versions

    prefix_len, continuation_len = header["prefix_len"], header["continuation_len"]
    t0, n_new = time.perf_counter(), 0
    bar = tqdm(desc=f"scan {shard.tag}" if shard.world > 1 else "scan", unit="para", disable=not progress)
    skipped = 0
    for chunk in iter_chunks(source, model, prefix_len, continuation_len, chunk_size, shard, skip_short):
        skipped += chunk.skipped
        part = parts / f"part-{chunk.number:08d}.jsonl"
        digest = chunk.content_hash
        if _part_is_done(part, digest):
            bar.update(len(chunk.indices))
            continue
        lines = [json.dumps({"chunk": chunk.number, "hash": digest, "n": len(chunk.indices),
                             "skipped": chunk.skipped})]
        if chunk.paragraphs is not None:
            paras = chunk.paragraphs
            paras.validate(model.vocab_size, model.n_ctx)
            for index, row in zip(chunk.indices, score_batch(model, paras, batch_size, non_max, mem_min, min_k).rows()):
                lines.append(json.dumps({"index": index} | row))
            n_new += len(paras)
        write_text_atomic(part, "\n".join(lines) + "\n")
        bar.update(len(chunk.indices))
    bar.close()
    seconds = time.perf_counter() - t0
    header |= {"source_sha256": file_sha256(source), "versions": versions(), "seconds": round(seconds, 2),
               "paragraphs_per_second": round(n_new / seconds, 2) if n_new and seconds > 0 else None}
    return _assemble(parts, target, header)


def _open_parts(parts: Path, header: dict[str, Any]) -> None:
    """Create the parts folder, or check that an interrupted scan there had the same settings."""
    manifest = parts / "header.json"
    if manifest.is_file():
        try:
            have = parse_json(manifest.read_text(encoding="utf-8"), str(manifest))
        except InputError:
            have = None
        if have != header:
            diff = sorted(k for k in header if not isinstance(have, dict) or have.get(k) != header[k])
            raise InputError(f"{parts} holds an interrupted scan with other settings ({', '.join(diff) or 'damaged'}); "
                             "resume it with the same settings, or delete that folder to start over")
        return
    parts.mkdir(parents=True, exist_ok=True)
    write_text_atomic(manifest, json.dumps(header) + "\n")


def _part_is_done(part: Path, digest: str) -> bool:
    """Whether ``part`` is a complete part of a chunk with this content (a part is written
    atomically, so a present one is whole unless damaged later)."""
    if not part.is_file():
        return False
    try:
        with part.open(encoding="utf-8") as f:
            head = json.loads(f.readline())
            rows = sum(1 for line in f if line.strip())
    except (ValueError, RecursionError, UnicodeDecodeError):
        return False
    return isinstance(head, dict) and head.get("hash") == digest and head.get("n") == rows


def _iter_parts(parts: Path) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Each part's head line (chunk, hash, counts) and rows, in chunk order."""
    for part in sorted(parts.glob("part-*.jsonl")):
        with part.open(encoding="utf-8") as f:
            head = json.loads(f.readline())
            yield head, [json.loads(line) for line in f if line.strip()]


def _assemble(parts: Path, target: Path, header: dict[str, Any]) -> ScanTable:
    """Write the table from the parts, in chunk order, one part in memory at a time: a first pass
    for the header (counts per split, skipped paragraphs), a second to write. Ids must be unique
    across chunks (checked by 64-bit hashes: about 60 MB per million paragraphs)."""
    seen: set[int] = set()
    skipped = 0

    def rows() -> Iterator[tuple[str, int, float]]:
        nonlocal skipped
        for head, batch in _iter_parts(parts):
            skipped += int(head.get("skipped", 0))
            for r in batch:
                key = id_key(r["id"])
                if key in seen:
                    raise InputError(f"paragraph id {r['id']!r} occurs more than once in {header['source']}; "
                                     "ids must be unique")
                seen.add(key)
                yield r["split"], r["em"], r["nll"]

    n, splits = split_summary(rows())
    header = header | {"n": n, "skipped_short": skipped, "splits": splits}
    write_table(target, header, (batch for _, batch in _iter_parts(parts)))
    return ScanTable(target, header)
