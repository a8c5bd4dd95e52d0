"""GGUF files into a :class:`~memlens.core.model.HookedModel`, dequantized once and cached as a
HuggingFace folder."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch

from memlens.core.compat import quiet_gguf_conversion, quiet_transformers
from memlens.core.errors import ModelLoadError
from memlens.core.model import HookedModel
from memlens.loading.hf import from_hf, load_hf_folder, load_tokenizer, save_hf_folder

def from_gguf(path: str | os.PathLike[str], *, prepend_bos: bool = False, dtype: torch.dtype = torch.float32,
              cache: bool = True, progress: bool = True) -> HookedModel:
    """Load a local GGUF file, dequantized to ``dtype``; needs the ``gguf`` package.

    Dequantizing takes most of the load time, so with ``cache`` the dequantized model is kept as a
    HuggingFace folder under ``<cache root>/gguf/`` (keyed by the file's name, size and mtime) and
    later loads read that folder instead.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelLoadError(f"{p}: no such GGUF file")
    folder = gguf_cache_folder(p, dtype) if cache else None
    if folder is not None and (folder / "config.json").is_file():
        try:
            return from_hf(load_hf_folder(folder, dtype), load_tokenizer(folder), name=p.name, prepend_bos=prepend_bos)
        except ModelLoadError:  # a damaged cache entry: convert again
            shutil.rmtree(folder, ignore_errors=True)
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ModelLoadError("loading GGUF files needs the 'gguf' package: pip install gguf") from None
    try:
        with quiet_transformers(), quiet_gguf_conversion(not progress):
            tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
            hf = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=dtype)
    except Exception as e:  # transformers raises many kinds for a bad file
        raise ModelLoadError(f"{p}: could not read it as a GGUF model ({type(e).__name__}: {e})") from None
    if folder is not None:
        save_hf_folder(hf, tok, folder)  # before booting: the bridge changes the model in place
    return from_hf(hf.eval(), tok, name=p.name, prepend_bos=prepend_bos)


def gguf_cache_folder(path: Path, dtype: torch.dtype) -> Path:
    from memlens.core.io import cache_root

    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{dtype}".encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{path.stem}-{key}"
