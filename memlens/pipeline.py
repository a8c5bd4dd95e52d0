"""``memlens run``: the whole study, stage by stage, into one run folder.

Stages: scan -> gradients -> perturb -> heads -> unlearn -> report. (Perturbation runs before
the head analysis so that activation patching reuses its perturbed paragraphs.) Each stage writes
its result files and then ``<stage>.summary.json``; a stage whose summary exists is done and is
skipped, so an interrupted run resumes, and ``memlens <stage>`` re-runs one stage alone.
``run.json`` records what the folder holds (model, paragraphs, seed): a folder that holds another
run is refused rather than mixed.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from memlens.data import ParagraphSet
from memlens.errors import InputError
from memlens.io import check_output_folder, read_json, remove_stray_temporaries, write_json_atomic
from memlens.config import RunConfig
from memlens.results import versions
from memlens.scan import ScanResult

STAGES = ("scan", "gradients", "perturb", "heads", "unlearn", "report")


@dataclass
class RunContext:
    """What the stages share: the run folder, the settings, the model (loaded on first use) and
    the scan."""

    out: Path
    config: RunConfig = field(default_factory=RunConfig)
    cache_dir: str | None = None
    progress: bool = True
    _model: Any = field(default=None, repr=False)
    _paragraphs: ParagraphSet | None = field(default=None, repr=False)
    _scan: ScanResult | None = field(default=None, repr=False)
    load_seconds: float = 0.0

    @property
    def model(self) -> Any:
        if self._model is None:
            from memlens.loading import load_model

            t0 = time.perf_counter()
            self._model = load_model(self.config.model, seed=self.config.seed, cache_dir=self.cache_dir,
                                     progress=self.progress, device=self.config.device, dtype=self.config.dtype)
            self.load_seconds = round(time.perf_counter() - t0, 1)
        return self._model

    def paragraphs(self) -> ParagraphSet:
        if self._paragraphs is None:
            if self.config.paragraphs is not None:
                self._paragraphs = ParagraphSet.from_file(self.config.paragraphs, self.model,
                                                          skip_short=self.config.skip_short)
            elif self.model.ground_truth is not None:
                self._paragraphs = self.model.ground_truth.paragraph_set()
            else:
                raise InputError(f"{self.config.model} has no built-in paragraphs; pass --paragraphs FILE")
        return self._paragraphs

    def scan_result(self) -> ScanResult:
        """The scan stage's result (running the scan first if the folder has none)."""
        if self._scan is None:
            if not (self.out / "scan.summary.json").exists():
                run_stage(self, "scan")
            try:
                self._scan = ScanResult.load(self.out / "scan.safetensors")
            except InputError as e:
                raise InputError(f"{e}; delete it and run `memlens scan --out {self.out}` again") from None
        return self._scan


def _stage_functions() -> dict[str, Callable[[RunContext], dict[str, Any]]]:
    from memlens import stages

    def report(ctx: RunContext) -> dict[str, Any]:
        from memlens.viz.report import write_report

        path = write_report(ctx.out)
        return {"path": str(path), "bytes": path.stat().st_size}

    return {"scan": stages.scan_stage, "gradients": stages.gradients_stage, "perturb": stages.perturb_stage,
            "heads": stages.heads_stage, "unlearn": stages.unlearn_stage, "report": report}


def run_stage(ctx: RunContext, stage: str) -> dict[str, Any]:
    """Run one stage now (whether or not it ran before) and write its summary."""
    fns = _stage_functions()
    if stage not in fns:
        raise InputError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    from memlens.stages import StageSkipped

    t0, loading = time.perf_counter(), ctx.load_seconds
    try:
        summary = fns[stage](ctx)
    except StageSkipped as e:
        summary = {"skipped": str(e)}
    summary["seconds"] = round(time.perf_counter() - t0 - (ctx.load_seconds - loading), 1)  # model loading apart
    write_json_atomic(ctx.out / f"{stage}.summary.json", summary)
    return summary


def manifest(ctx: RunContext) -> dict[str, Any]:
    """What identifies a run: model, paragraphs (path and content hash), seed and settings."""
    para = None
    if ctx.config.paragraphs is not None:
        path = Path(ctx.config.paragraphs)
        if not path.is_file():
            recorded = _recorded_paragraphs(ctx.out)
            if recorded is not None and recorded.get("path") == str(path.resolve()):
                return _recorded_run(ctx.out)  # scanned already: later stages read the scan, not the file
            raise InputError(f"{path}: no such paragraph file")
        para = {"path": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {"model": ctx.config.model, "paragraphs": para, "seed": ctx.config.seed, "config": ctx.config.to_dict()}


def _recorded_run(folder: Path) -> dict[str, Any]:
    return {k: v for k, v in read_json(folder / "run.json").items() if k in ("model", "paragraphs", "seed", "config")}


def _recorded_paragraphs(folder: Path) -> dict[str, Any] | None:
    """The paragraph file a run folder recorded, if that run has finished its scan (the later
    stages read the paragraphs from scan.safetensors, so the file may have moved since)."""
    if not (folder / "run.json").is_file() or not (folder / "scan.summary.json").is_file():
        return None
    return _recorded_run(folder).get("paragraphs")


def read_run_config(folder: Path) -> RunConfig | None:
    """The settings a run folder was made with (from its ``run.json``), or None if it holds no run."""
    path = folder / "run.json"
    if not path.exists():
        return None
    have = read_json(path, "delete the folder or choose another --out")
    if not isinstance(have, dict):
        raise InputError(f"{path} is not a run manifest (a JSON object); delete the folder or choose another --out")
    if "config" in have:
        return RunConfig.from_dict(have["config"], source=str(path))
    para = (have.get("paragraphs") or {}).get("path")
    return RunConfig(model=have.get("model", "organism"), paragraphs=para, seed=have.get("seed", 0))


def claim_folder(ctx: RunContext) -> dict[str, Any]:
    """Create the run folder or check that it holds this run; raise rather than mix two runs
    (another model, paragraph file, seed, or any result-affecting setting)."""
    path = ctx.out / "run.json"
    check_output_folder(ctx.out, "the run folder (--out)")
    if ctx.out.is_dir():
        remove_stray_temporaries(ctx.out)  # left by a process killed while it wrote a file
    want = manifest(ctx)
    before = read_run_config(ctx.out)
    if before is not None:
        have = read_json(path)
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
    if ctx.out.exists() and any(ctx.out.iterdir()):
        raise InputError(f"{ctx.out} is not empty and holds no memlens run (no run.json); choose another --out")
    ctx.paragraphs()  # a model or paragraph file that cannot be read fails here, before the folder is claimed
    try:
        ctx.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the run folder {ctx.out} ({e.strerror or e}); choose another --out") from None
    write_json_atomic(path, want | {"versions": versions(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return want


def run_pipeline(config: RunConfig | str = "organism", out: str | Path = "memlens-run", *,
                 cache_dir: str | None = None, stages: Sequence[str] = STAGES, redo: bool = False,
                 progress: bool = True) -> dict[str, Any]:
    """Run ``stages`` into ``out`` (skipping those already done unless ``redo``) and return the
    combined summary, also written to ``summary.json``.

    Args:
        config: the run's settings, or just a model name (all other settings default).
        out: the run folder.
        cache_dir: where embedded models are cached.
        stages: the stages to run, in order.
        redo: run stages again even when their summary exists.
        progress: show progress bars.

    Returns:
        The run's summary (also in ``<out>/summary.json``).
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise InputError(f"unknown stage(s) {unknown}; stages are {', '.join(STAGES)}")
    if isinstance(config, str):
        config = RunConfig.recommended(config)
    ctx = RunContext(Path(out), config, cache_dir, progress)
    claim_folder(ctx)
    bar = tqdm(list(stages), desc="memlens run", disable=not progress, unit="stage")
    for stage in bar:
        bar.set_postfix_str(stage)
        if stage == "report":
            write_summary(ctx)
        if redo or not (ctx.out / f"{stage}.summary.json").exists():
            run_stage(ctx, stage)
    return write_summary(ctx)


def read_stage_summary(folder: Path, stage: str) -> dict[str, Any] | None:
    """``<stage>.summary.json`` of a run folder (None if the stage has not run); a damaged one is
    an :class:`InputError` that says how to redo the stage."""
    path = folder / f"{stage}.summary.json"
    if not path.exists():
        return None
    data = read_json(path, f"delete it and run `memlens {stage} --out {folder}` again")
    if not isinstance(data, dict):
        raise InputError(f"{path} is not a stage summary (a JSON object); delete it and run "
                         f"`memlens {stage} --out {folder}` again")
    return data


def write_summary(ctx: RunContext) -> dict[str, Any]:
    """Gather the run manifest and every stage summary into ``summary.json``; return it."""
    summary: dict[str, Any] = {"run": read_json(ctx.out / "run.json")}
    seconds: dict[str, float] = {}
    if ctx.load_seconds:
        seconds["load_model"] = ctx.load_seconds
    for stage in STAGES:
        data = read_stage_summary(ctx.out, stage)
        if data is not None:
            seconds[stage] = data.pop("seconds", None)
            if stage == "scan":
                summary.update(data)
            else:
                summary[stage] = data
    summary["seconds"] = seconds
    summary["torch_threads"] = torch.get_num_threads()
    write_json_atomic(ctx.out / "summary.json", summary)
    return summary
