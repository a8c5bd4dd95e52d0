"""The Ray Data engine of the streaming scan (``memlens scan FILE --engine ray``; ``pip install
memlens[ray]``): read the paragraphs -> score them in a pool of actors that each hold the model ->
write Parquet blocks, resumable by paragraph id through Ray Data's checkpointing.

Each actor loads the model once from its name or path (``organism-tiny``, a folder, a hub id), so
the same call runs on a laptop's local cluster and on a multi-node GPU cluster
(``ray_address``, ``num_gpus=1`` per actor). Rows written before a run was killed are skipped
when it runs again (their ids are in the checkpoint), and :func:`read_ray_output` drops the
duplicates a kill can leave between a block's write and its checkpoint. The result is the same
:class:`~memlens.scale.stream.ScanTable` as the local engine's, in paragraph-id order (Ray does not
keep the input order; ``index`` is -1).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from memlens.analyses.scan import DEFAULT_BATCH_SIZE
from memlens.core.defaults import DEFAULT_CONTINUATION_LEN, DEFAULT_PREFIX_LEN, MIN_K, NON_MEMORIZED_MAX_EM
from memlens.core.errors import InputError
from memlens.scale.scan_table import COLUMNS, TABLE_KIND, TABLE_VERSION, ScanTable, split_summary, write_table
from memlens.core.lock import file_lock_path, locked
from memlens.scale.stream import check_records, file_sha256, table_target


class ScanWorker:
    """A Ray Data actor: loads the model once, then scores batches of paragraphs (EM, NLL,
    extraction log-probability, min-K% NLL) in one teacher-forced pass each."""

    def __init__(self, model: str, seed: int = 0, cache_dir: str | None = None, device: str | None = None,
                 dtype: str | None = None, prefix_len: int = DEFAULT_PREFIX_LEN,
                 continuation_len: int = DEFAULT_CONTINUATION_LEN, batch_size: int = DEFAULT_BATCH_SIZE,
                 non_memorized_max_em: int | None = None, memorized_min_em: int | None = None,
                 min_k: float = MIN_K, threads: int | None = None, precision: str | None = None) -> None:
        import torch

        from memlens.analyses.scan import split_thresholds
        from memlens.core.metrics import check_min_k
        from memlens.loading import load_model

        if threads:
            torch.set_num_threads(threads)  # an actor per CPU: no oversubscription
        self.model = load_model(model, seed=seed, cache_dir=cache_dir, progress=False, device=device, dtype=dtype,
                                precision=precision)
        self.prefix_len, self.continuation_len, self.batch_size = prefix_len, continuation_len, batch_size
        self.non_max, self.mem_min = split_thresholds(continuation_len, non_memorized_max_em, memorized_min_em)
        check_min_k(min_k)
        self.min_k = min_k

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        from memlens.core.data import ParagraphSet
        from memlens.analyses.scan import score_batch

        ids = [str(i) for i in batch["id"]]
        need = self.prefix_len + self.continuation_len
        if "tokens" in batch:
            tokens = [list(map(int, t))[:need] for t in batch["tokens"]]
        else:
            tokens = [self.model.to_tokens(str(t))[0].tolist()[:need] for t in batch["text"]]
        short = [pid for pid, t in zip(ids, tokens) if len(t) < need]
        if short:
            raise InputError(f"paragraph {short[0]!r} has fewer than {need} tokens; drop short paragraphs first")
        paras = ParagraphSet.from_tokens(tokens, self.prefix_len, self.continuation_len, ids=ids)
        paras.validate(self.model.vocab_size, self.model.n_ctx)
        scored = score_batch(self.model, paras, self.batch_size, self.non_max, self.mem_min, self.min_k)
        return {"index": np.full(len(ids), -1, dtype=np.int64), "id": np.array(scored.ids, dtype=object),
                "em": scored.em.numpy().astype(np.int32), "nll": scored.nll.double().numpy(),
                "extraction_logprob": scored.extraction_logprob.numpy(), "min_k_nll": scored.min_k_nll.double().numpy(),
                "split": np.array(scored.split, dtype=object),
                "sha": np.array(scored.sha, dtype=object)}


def scan_with_ray(
    model: str,
    source: str | Path,
    out: str | Path,
    *,
    workers: int = 1,
    num_gpus: float = 0.0,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    seed: int = 0,
    cache_dir: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    prefix_len: int = DEFAULT_PREFIX_LEN,
    continuation_len: int = DEFAULT_CONTINUATION_LEN,
    batch_size: int = DEFAULT_BATCH_SIZE,
    rows_per_call: int = 64,
    non_memorized_max_em: int = NON_MEMORIZED_MAX_EM,
    memorized_min_em: int | None = None,
    min_k: float = MIN_K,
    precision: str | None = None,
) -> ScanTable:
    """Scan a JSONL or Parquet paragraph file with Ray Data into the table ``out``.

    Args:
        model: a model name or path every actor can load (``organism-tiny``, a folder, a hub id).
        source: the paragraph file (``id`` and ``tokens`` or ``text`` per record; ids unique).
        out: the table (``.parquet`` or ``.jsonl``); Ray's blocks go to ``<out>.ray/`` and its
            checkpoint to ``<out>.ray-checkpoint/`` (both removed when the table is written).
            On a multi-node cluster, ``out`` must be on a file system every node sees.
        workers: actors in the pool (each holds a model).
        num_gpus: GPUs per actor (1 on a GPU cluster; the actor then runs on ``cuda``).
        ray_address: an existing cluster (``auto``, ``ray://host:10001``); default a local one.
        num_cpus: CPUs of the local cluster (default ``workers + 1``: actors holding every CPU
            leave none to read and write, and the run hangs).
        seed, cache_dir, device, dtype: how each actor loads the model.
        prefix_len, continuation_len: the split of each paragraph (tokens).
        batch_size: paragraphs per forward pass; ``rows_per_call``: rows per actor call.
        non_memorized_max_em, memorized_min_em: the split thresholds.
        min_k: the share of continuation tokens in the ``min_k_nll`` column.
        precision: each actor's compute precision (``fp32`` or ``bf16-mixed``; default fp32).

    Returns:
        The :class:`~memlens.scale.stream.ScanTable` written.
    """
    try:
        import ray
        import ray.data
        from ray.data import ActorPoolStrategy
        from ray.data.checkpoint.interfaces import CheckpointConfig
    except ImportError:
        raise InputError("--engine ray needs Ray Data: pip install 'memlens[ray]'") from None
    from memlens.core.results import versions
    from memlens.analyses.scan import split_thresholds
    from memlens.core.metrics import check_min_k

    source, target = Path(source), Path(out)
    if not source.is_file():
        raise InputError(f"{source}: no such paragraph file")
    if source.suffix.lower() not in (".jsonl", ".parquet"):
        raise InputError(f"{source}: the Ray engine reads JSONL or Parquet")
    table_target(source, target)
    check_records(source)  # the local engine's checks (ids unique, integer token ids), before Ray starts
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    non_max, mem_min = split_thresholds(continuation_len, non_memorized_max_em, memorized_min_em)
    check_min_k(min_k)
    if precision is not None:
        from memlens.core.precision import check_precision

        check_precision(precision)
    with locked(file_lock_path(target), f"the scan table {target}"):
        blocks, checkpoint = target.with_name(target.name + ".ray"), target.with_name(target.name + ".ray-checkpoint")
        started_here = not ray.is_initialized()
        if started_here:
            if ray_address:
                ray.init(address=ray_address, log_to_driver=False)
            else:
                ray.init(num_cpus=num_cpus or workers + 1, include_dashboard=False, log_to_driver=False)
        t0 = time.perf_counter()
        try:
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False
            ctx.checkpoint_config = CheckpointConfig(id_column="id", checkpoint_path=str(checkpoint.resolve()),
                                                     delete_checkpoint_on_success=False)
            read = ray.data.read_parquet if source.suffix.lower() == ".parquet" else ray.data.read_json
            ds = read(str(source.resolve()))
            kwargs = dict(model=model, seed=seed, cache_dir=cache_dir, device=device or ("cuda" if num_gpus else None),
                          dtype=dtype, prefix_len=prefix_len, continuation_len=continuation_len, batch_size=batch_size,
                          non_memorized_max_em=non_max, memorized_min_em=mem_min, min_k=min_k, threads=None if num_gpus else 1,
                          precision=precision)
            ds = ds.map_batches(ScanWorker, fn_constructor_kwargs=kwargs, compute=ActorPoolStrategy(size=workers),
                                batch_size=rows_per_call, batch_format="numpy",
                                **({"num_gpus": num_gpus} if num_gpus else {"num_cpus": 1}))
            ds.write_parquet(str(blocks.resolve()))
        finally:
            ray.data.DataContext.get_current().checkpoint_config = None
            if started_here:
                ray.shutdown()
        seconds = time.perf_counter() - t0
        rows = read_ray_output(blocks)
        n, splits = split_summary((r["split"], r["em"], r["nll"]) for r in rows)
        header = {"memlens": TABLE_KIND, "version": TABLE_VERSION, "model": model, "source": str(source.resolve()),
                  "source_sha256": file_sha256(source), "prefix_len": prefix_len, "continuation_len": continuation_len, "chunk_size": None,
                  "shard": [0, 1], "non_memorized_max_em": non_max, "memorized_min_em": mem_min, "min_k": min_k, "engine": "ray",
                  "precision": precision or "fp32",
                  "workers": workers, "versions": versions(), "seconds": round(seconds, 2),
                  "paragraphs_per_second": round(n / seconds, 2) if seconds > 0 else None, "n": n,
                  "skipped_short": 0, "splits": splits}
        write_table(target, header, iter([rows]))
        shutil.rmtree(blocks, ignore_errors=True)
        shutil.rmtree(checkpoint, ignore_errors=True)
        return ScanTable(target, header)


def read_ray_output(blocks: str | Path) -> list[dict[str, Any]]:
    """The rows of the Parquet blocks a Ray scan wrote, each paragraph id once (a kill between
    a block's write and its checkpoint can leave a row twice), in id order. A block file torn by
    a kill is passed over: its rows were not checkpointed, so the next run wrote them again."""
    import pyarrow.parquet as pq

    files = sorted(Path(blocks).rglob("*.parquet"))
    if not files:
        raise InputError(f"{blocks}: the Ray scan wrote no results")
    seen: dict[str, dict[str, Any]] = {}
    for f in files:
        try:
            rows = pq.read_table(str(f)).to_pylist()
        except Exception:  # pyarrow raises several kinds for a torn file
            continue
        for r in rows:
            seen.setdefault(str(r["id"]), {k: r[k] for k in COLUMNS})
    return [seen[k] for k in sorted(seen)]

