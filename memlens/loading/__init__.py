"""Loading models into a :class:`~memlens.core.model.HookedModel`, offline whenever possible.

Every path ends in :func:`from_hf` (boot a TransformerLens 4 bridge around a HuggingFace model)
or :func:`wrap` (an existing TransformerLens model). A hub name that is not in the local cache
fails at once, with the ways to load a model locally, when the hub cannot be reached. The
modules: :mod:`~memlens.loading.sources` (the registered names), :mod:`~memlens.loading.hf`
(HuggingFace models, folders and the hub), :mod:`~memlens.loading.gguf` (GGUF files),
:mod:`~memlens.loading.processed` (TransformerLens's weight processing).
"""

from __future__ import annotations

from typing import Any

import torch

from memlens.core.defaults import WEIGHTS_FORMS, WeightsForm, one_of
from memlens.core.errors import ModelLoadError
from memlens.core.model import HookedModel, register_loaders
from memlens.loading import hf
from memlens.loading.gguf import from_gguf, gguf_cache_folder
from memlens.loading.hf import (from_hf, hub_reachable, load_hf_folder, load_tokenizer, save_hf_folder,
                                wrap)
from memlens.loading.sources import model_sources, recommended_settings, register_model_source, registered_source

__all__ = ["from_gguf", "from_hf", "from_pretrained", "gguf_cache_folder", "hub_reachable", "load_hf_folder",
           "load_model", "load_tokenizer", "model_sources", "recommended_settings", "register_model_source",
           "save_hf_folder", "wrap"]


def from_pretrained(name: str, *, prepend_bos: bool = False, dtype: torch.dtype = torch.float32,
                    **kwargs: Any) -> HookedModel:
    """A hub model (e.g. ``EleutherAI/gpt-neo-125M``), a local folder (:func:`memlens.loading.hf.from_pretrained`)
    or a ``.gguf`` file (:func:`from_gguf`)."""
    if name.endswith(".gguf"):
        return from_gguf(name, prepend_bos=prepend_bos, dtype=dtype)
    return hf.from_pretrained(name, prepend_bos=prepend_bos, dtype=dtype, **kwargs)


def load_model(spec: str, *, seed: int = 0, cache_dir: str | None = None, progress: bool = True,
               device: str | None = None, dtype: str | torch.dtype | None = None,
               weights: WeightsForm = "raw", precision: str | None = None) -> HookedModel:
    """The model a ``--model`` value names: a registered source (``organism``, ``organism-tiny``),
    a ``.gguf`` file, a local folder or a hub name. The one resolver of the CLI and the pipeline.

    Args:
        spec: the name, path or hub id.
        seed: seed of a registered (built) model such as the organism.
        cache_dir: where a registered model is cached (default ``$MEMLENS_CACHE`` or
            ``~/.cache/memlens``).
        progress: show progress bars while a registered model is built.
        device: move the model there (``cuda``, ``cuda:1``, ``cpu``).
        dtype: cast it (``bfloat16`` / ``float16`` on a GPU; ``float32`` default).
        weights: ``raw`` (the HuggingFace weights, memlens's default) or ``processed``
            (TransformerLens's default processing, as the paper's code loaded GPT-Neo:
            :func:`memlens.loading.processed.process_weights`).
        precision: the model's compute precision (``fp32`` or ``bf16-mixed``; default: ``fp32``, or
            ``$MEMLENS_PRECISION``; docs/precision.md).

    Returns:
        The loaded :class:`~memlens.HookedModel`.

    Raises:
        ModelLoadError: the model cannot be found or loaded (the message says what to do).
    """
    if spec in model_sources():
        model = registered_source(spec)(seed=seed, cache_dir=cache_dir, progress=progress)
    elif spec.endswith(".gguf"):
        model = from_gguf(spec, progress=progress)
    else:
        model = from_pretrained(spec)
    if weights == "processed":
        from memlens.loading.processed import process_weights

        model = process_weights(model)
    elif weights != "raw":
        raise ModelLoadError(f"unknown weights {weights!r}; use {one_of(WEIGHTS_FORMS)}")
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    if precision is not None:
        model.precision = precision
    return model


register_loaders(from_pretrained=from_pretrained, from_hf=from_hf, from_gguf=from_gguf, wrap=wrap,
                 load_model=load_model, save_hf_folder=save_hf_folder)
