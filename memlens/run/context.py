"""What the stages of a run share: the run folder, the settings, the model (loaded on first
use), the paragraphs and the scan."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memlens.analyses.scan import ScanResult
from memlens.core.data import ParagraphSet
from memlens.core.errors import InputError
from memlens.run.config import RunConfig
from memlens.run.folder import RunFolder


@dataclass
class RunContext:
    """The run folder, the settings, the model (loaded on first use) and the scan.

    Attributes:
        out: the run folder's path (``folder`` is its :class:`RunFolder`).
        config: the run's settings.
        cache_dir: where embedded models are cached.
        progress: show progress bars.
        load_seconds: seconds spent loading the model (excluded from stage timings).
        stage: the stage running now (set by :func:`memlens.run.pipeline.run_stage`).
        fresh: whether that stage computes every file again instead of reusing saved ones.
    """

    out: Path
    config: RunConfig = field(default_factory=RunConfig)
    cache_dir: str | None = None
    progress: bool = True
    _model: Any = field(default=None, repr=False)
    _paragraphs: ParagraphSet | None = field(default=None, repr=False)
    _scan: ScanResult | None = field(default=None, repr=False)
    load_seconds: float = 0.0
    stage: str = ""
    fresh: bool = False

    def __post_init__(self) -> None:
        self.out = Path(self.out)

    @property
    def folder(self) -> RunFolder:
        """The run folder: every path of the run."""
        return RunFolder(self.out)

    @property
    def precision(self) -> str:
        """The precision the running stage computes at (:meth:`RunConfig.stage_precision`; the run's
        own between stages)."""
        return self.config.stage_precision(self.stage) if self.stage else self.config.precision

    @property
    def model(self) -> Any:
        """The run's model, loaded on first use, at the running stage's precision."""
        if self._model is not None:
            self._model.precision = self.precision
        if self._model is None:
            from memlens.loading import load_model

            t0 = time.perf_counter()
            model = load_model(self.config.model, seed=self.config.seed, cache_dir=self.cache_dir,
                               progress=self.progress, device=self.config.device, dtype=self.config.dtype,
                               weights=self.config.weights)
            self.load_seconds = round(time.perf_counter() - t0, 1)
            self.folder.record_model_name(model.name)
            model.precision = self.precision
            self._model = model
        return self._model

    def paragraphs(self) -> ParagraphSet:
        """The run's paragraphs: the file's, else the model's ground-truth set."""
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
        """The scan stage's result (the scan stage must have run: every stage that reads it
        declares ``needs=("scan",)``)."""
        if self._scan is None:
            path = self.folder.file("scan")
            if not self.folder.is_done("scan") or not path.exists():
                raise InputError(f"{self.out} has no finished scan; run `memlens scan --out {self.out}` first")
            try:
                result = ScanResult.load(path)
            except InputError as e:
                raise InputError(f"{e}; run `memlens scan --out {self.out}` again") from None
            self._scan = self.folder.check_provenance(result, path, "scan")
        return self._scan
