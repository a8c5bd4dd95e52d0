"""``memlens run``: the whole study, stage by stage, into one run folder.

The stages are the rows of the Stage table (:mod:`memlens.run.stage`; the built-in rows in
:mod:`memlens.run.stages`, one module each): scan -> gradients -> perturb -> heads -> ... -> report. Each stage writes its result files and then ``<stage>.summary.json``; a stage whose
summary exists is done and is skipped, so an interrupted run resumes, and ``memlens <stage>``
re-runs one stage alone. ``run.json`` records what the folder holds (model, paragraphs, seed,
settings): a folder that holds another run is refused rather than mixed.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from memlens.core.progress import tqdm

from memlens.core.errors import InputError
from memlens.core.io import check_output_folder, remove_stray_temporaries, write_json_atomic
from memlens.core.lock import folder_lock_path, locked
from memlens.core.results import versions
from memlens.run.config import RunConfig
from memlens.run.context import RunContext
from memlens.run.folder import RunFolder
from memlens.run.stage import StageSkipped, get_stage, stage_names
from memlens.run import stages as _builtin_stages  # noqa: F401  (registers the built-in rows of the Stage table)

__all__ = ["RunContext", "claim_folder", "hold_folder", "read_run_config", "read_stage_summary", "run_pipeline", "run_stage",
           "write_summary"]


def run_stage(ctx: RunContext, stage: str, fresh: bool = False) -> dict[str, Any]:
    """Run one stage now and write its summary; the stages it needs run first when they have
    not finished in the folder. With ``fresh``, every file of the stage is computed again and
    replaces the earlier one atomically (``memlens <stage> --out D``; the earlier files stay until
    then, so a failed redo loses nothing); without, files an interrupted attempt saved are reused."""
    row = get_stage(stage)
    for need in row.needs:
        if not ctx.folder.is_done(need):
            run_stage(ctx, need)
    t0, loading = time.perf_counter(), ctx.load_seconds
    ctx.stage, ctx.fresh = stage, fresh
    try:
        summary = row.run(ctx)
    except StageSkipped as e:
        summary = {"skipped": str(e)}
    finally:
        ctx.stage, ctx.fresh = "", False
    if row.config is not None:
        summary.setdefault("precision", ctx.config.stage_precision(stage))
    summary["seconds"] = round(time.perf_counter() - t0 - (ctx.load_seconds - loading), 1)  # model loading apart
    ctx.folder.write_stage_summary(stage, summary)
    return summary


def manifest(ctx: RunContext) -> dict[str, Any]:
    """What identifies a run: model, paragraphs (path and content hash), seed and settings."""
    para = None
    if ctx.config.paragraphs is not None:
        path = Path(ctx.config.paragraphs)
        if not path.is_file():
            recorded = _recorded_paragraphs(ctx.folder)
            if recorded is not None and recorded.get("path") == str(path.resolve()):
                return _recorded_run(ctx.folder)  # scanned already: later stages read the scan, not the file
            raise InputError(f"{path}: no such paragraph file")
        para = {"path": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    out = {"model": ctx.config.model, "paragraphs": para, "seed": ctx.config.seed, "config": ctx.config.to_dict()}
    if ctx.config.preset:
        out["preset_overrides"] = ctx.config.preset_overrides()
    return out


def _recorded_run(folder: RunFolder) -> dict[str, Any]:
    return {k: v for k, v in (folder.read_manifest() or {}).items() if k in ("model", "paragraphs", "seed", "config",
                                                                                    "preset_overrides")}


def _recorded_paragraphs(folder: RunFolder) -> dict[str, Any] | None:
    """The paragraph file a run folder recorded, if that run has finished its scan (the later
    stages read the paragraphs from scan.safetensors, so the file may have moved since)."""
    if not folder.manifest.is_file() or not folder.is_done("scan"):
        return None
    return _recorded_run(folder).get("paragraphs")


def read_run_config(folder: Path | RunFolder) -> RunConfig | None:
    """The settings a run folder was made with (from its ``run.json``), or None if it holds no run."""
    rf = folder if isinstance(folder, RunFolder) else RunFolder(Path(folder))
    have = rf.read_manifest()
    return None if have is None else _manifest_config(have, rf)


def _manifest_config(have: dict[str, Any], folder: RunFolder) -> RunConfig:
    """The RunConfig a parsed ``run.json`` records (older manifests: model, paragraphs, seed)."""
    if "config" in have:
        return RunConfig.from_dict(have["config"], source=str(folder.manifest))
    para = (have.get("paragraphs") or {}).get("path")
    return RunConfig(model=have.get("model", "organism"), paragraphs=para, seed=have.get("seed", 0))


def read_stage_summary(folder: Path | RunFolder, stage: str) -> dict[str, Any] | None:
    """``<stage>.summary.json`` of a run folder (see :meth:`RunFolder.read_stage_summary`)."""
    rf = folder if isinstance(folder, RunFolder) else RunFolder(Path(folder))
    return rf.read_stage_summary(stage)


def claim_folder(ctx: RunContext) -> dict[str, Any]:
    """Create the run folder or check that it holds this run; raise rather than mix two runs
    (another model, paragraph file, seed, or any result-affecting setting)."""
    folder = ctx.folder
    check_output_folder(ctx.out, "the run folder (--out)")
    if ctx.out.is_dir():
        remove_stray_temporaries(ctx.out)  # left by a process killed while it wrote a file
    want = manifest(ctx)
    have = folder.read_manifest()
    if have is not None:
        before = _manifest_config(have, folder)
        diff = [k for k in ("model", "paragraphs", "seed") if have.get(k) != want[k]]
        if diff:
            theirs = ", ".join(f"{k}={have.get(k)!r}" for k in diff)
            raise InputError(f"{ctx.out} holds another run ({theirs}); choose another --out, or delete that folder "
                             "to start over")
        changed = before.differences(ctx.config)
        if changed:
            raise InputError(f"{ctx.out} was run with other settings ({'; '.join(changed)}); resume it with the "
                             "same settings (drop those flags or that --config), or choose another --out")
        return have
    if ctx.out.exists() and any(p != folder_lock_path(ctx.out) for p in ctx.out.iterdir()):
        raise InputError(f"{ctx.out} is not empty and holds no memlens run (no run.json); choose another --out")
    ctx.paragraphs()  # a model or paragraph file that cannot be read fails here, before the folder is claimed
    try:
        ctx.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the run folder {ctx.out} ({e.strerror or e}); choose another --out") from None
    write_json_atomic(folder.manifest, want | {"versions": versions(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    if ctx._model is not None:  # loaded above (the paragraphs need its tokenizer or ground truth)
        folder.record_model_name(ctx._model.name)
    return want


@contextlib.contextmanager
def hold_folder(ctx: RunContext) -> Iterator[None]:
    """Lock the run folder for this process for the block (``<folder>/.memlens.lock``): a second
    ``memlens run`` or stage command on the same folder is refused while this one lives, and a
    lock left by a killed process is taken over with a warning. A folder the lock created and
    nothing else filled is removed again."""
    check_output_folder(ctx.out, "the run folder (--out)")
    existed = ctx.out.exists()
    try:
        with locked(folder_lock_path(ctx.out), f"the run folder {ctx.out}"):
            yield
    finally:
        if not existed and ctx.out.is_dir() and not any(ctx.out.iterdir()):
            ctx.out.rmdir()


def run_pipeline(config: RunConfig | str = "organism", out: str | Path = "memlens-run", *,
                 cache_dir: str | None = None, stages: Sequence[str] | None = None, redo: bool = False,
                 progress: bool = True) -> dict[str, Any]:
    """Run ``stages`` into ``out`` (skipping those already done unless ``redo``) and return the
    combined summary, also written to ``summary.json``.

    Args:
        config: the run's settings, or just a model name (all other settings default).
        out: the run folder.
        cache_dir: where embedded models are cached.
        stages: the stages to run, in order (default: every row of the Stage table).
        redo: run stages again even when their summary exists.
        progress: show progress bars.

    Returns:
        The run's summary (also in ``<out>/summary.json``).
    """
    names = stage_names() if stages is None else tuple(stages)
    unknown = [s for s in names if s not in stage_names()]
    if unknown:
        raise InputError(f"unknown stage(s) {unknown}; stages are {', '.join(stage_names())}")
    if isinstance(config, str):
        config = RunConfig.recommended(config)
    ctx = RunContext(Path(out), config, cache_dir, progress)
    with hold_folder(ctx):
        claim_folder(ctx)
        bar = tqdm(list(names), desc="memlens run", disable=not progress, unit="stage")
        for stage in bar:
            bar.set_postfix_str(stage)
            if stage == "report":
                write_summary(ctx)
            if redo or not ctx.folder.is_done(stage):
                run_stage(ctx, stage, fresh=redo)
        return write_summary(ctx)


def write_summary(ctx: RunContext) -> dict[str, Any]:
    """Gather the run manifest and every stage summary into ``summary.json``; return it."""
    summary: dict[str, Any] = {"run": ctx.folder.read_manifest()}
    seconds: dict[str, float] = {}
    if ctx.load_seconds:
        seconds["load_model"] = ctx.load_seconds
    for stage in stage_names():
        data = ctx.folder.read_stage_summary(stage)
        if data is not None:
            seconds[stage] = data.pop("seconds", None)
            if stage == "scan":
                summary.update(data)
            else:
                summary[stage] = data
    summary["seconds"] = seconds
    summary["torch_threads"] = torch.get_num_threads()
    write_json_atomic(ctx.folder.summary, summary)
    return summary
