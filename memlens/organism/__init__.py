"""The organism: memlens' embedded default model, with known memorized paragraphs.

A GPT-Neo-architecture model trained here, in minutes on a CPU, on the Python standard library
with planted paragraphs repeated a chosen number of times. Its ground truth
(:class:`OrganismInfo`) travels with it as ``model.ground_truth``. Importing this package
registers the model names ``organism`` and ``organism-tiny`` with :func:`memlens.load_model`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from memlens.core.defaults import check_seed
from memlens.core.errors import CacheError
from memlens.core.io import share_permissions
from memlens.organism.cache import default_cache_root, discard, organism_key, seal, verify
from memlens.organism.config import PRESETS, OrganismConfig, get_config
from memlens.organism.info import OrganismInfo

__all__ = ["OrganismConfig", "OrganismInfo", "PRESETS", "build", "load_organism", "organism_path"]


def organism_path(size: str = "default", seed: int = 0, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the organism of this size and seed lives in the cache."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    return root / organism_key(size, seed)


def build(
    size: str = "default", seed: int = 0, cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True, force: bool = False,
) -> Path:
    """Build the organism into the cache (unless a verified one is there) and return its folder.

    The build runs in ``<folder>.building`` (resumable from its checkpoint) and is renamed into
    place only once sealed, so a reader never sees a partial organism.
    """
    check_seed(seed, "organism seed")
    cfg = get_config(size)
    if cfg.extra.get("base") == "smollm2":
        from memlens.organism.smollm2 import build_smollm2_organism as build_organism
    else:
        from memlens.organism.train import build_organism
    folder = organism_path(size, seed, cache_dir)
    if folder.exists() and not force:
        try:
            verify(folder)
            return folder
        except CacheError as e:
            discard(folder, str(e))
    elif folder.exists():
        shutil.rmtree(folder)
    work = folder.with_name(folder.name + ".building")
    build_organism(cfg, seed, work, progress=progress)
    seal(work)
    share_permissions(work)
    os.replace(work, folder)
    return folder


def load_organism(
    size: str = "default", seed: int = 0, cache_dir: str | os.PathLike[str] | None = None, progress: bool = True,
):
    """The organism as a :class:`~memlens.HookedModel` (built on first use, then loaded in seconds)."""
    from memlens.loading import load_tokenizer, from_hf, load_hf_folder

    folder = build(size, seed, cache_dir, progress=progress)
    info = OrganismInfo.load(folder / "ground_truth")
    return from_hf(load_hf_folder(folder / "model"), load_tokenizer(folder / "tokenizer"),
                   name=f"organism-{size}-seed{seed}", ground_truth=info)


# Settings that make every stage of `memlens run` on the SmolLM2 organism (30 layers x 9 heads,
# 135M parameters) fit in minutes on 2 CPU cores; see docs/real-model.md for the timings.
SMOLLM2_SETTINGS = {
    "gradients.max_paragraphs": 16, "gradients.max_per_em_bin": 16,
    "perturb.max_paragraphs": 8, "perturb.n_samples": 2,
    "heads.max_paragraphs": 8, "heads.exact_top": 12,
    "unlearn.n_targets": 2, "unlearn.retain_paragraphs": 8, "unlearn.edit_steps": 10,
    "unlearn.edit_masks": ["topk", "random"],
}


def _register() -> None:
    from memlens.loading import register_model_source

    for name, size in (("organism", "default"), ("organism-default", "default"), ("organism-tiny", "tiny")):
        register_model_source(
            name, lambda size=size, **kw: load_organism(size=size, **kw),
            f"the embedded organism ({size}): GPT-Neo trained here with planted paragraphs")
    for name, size in (("organism-smollm2", "smollm2"), ("organism-smollm2-micro", "smollm2-micro")):
        register_model_source(
            name, lambda size=size, **kw: load_organism(size=size, **kw),
            f"SmolLM2-135M with paragraphs planted by continued training ({size})", SMOLLM2_SETTINGS)


_register()
