"""HuggingFace models into a :class:`~memlens.core.model.HookedModel`: boot a TransformerLens 4
bridge around an in-memory model (:func:`from_hf`), wrap a TransformerLens model (:func:`wrap`),
load a hub name or a saved folder (:func:`from_pretrained`), and save a folder atomically."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from memlens.core.architectures import SUPPORTED_MODEL_TYPES
from memlens.core.compat import quiet_transformers
from memlens.core.errors import ModelLoadError
from memlens.core.io import share_permissions
from memlens.core.model import HookedModel
from memlens.loading.sources import check_spec

def from_hf(
    hf_model: nn.Module,
    tokenizer: Any,
    *,
    name: str | None = None,
    prepend_bos: bool = False,
    ground_truth: Any = None,
) -> HookedModel:
    """Boot a TransformerLens 4 ``TransformerBridge`` around an in-memory HuggingFace causal LM.

    Booting changes ``hf_model`` in place (modules wrapped, parameter names changed): do not
    ``save_pretrained`` it afterwards. The weights are shared, not copied.
    """
    from transformer_lens.model_bridge import TransformerBridge

    model_type = getattr(getattr(hf_model, "config", None), "model_type", None)
    tokenizer = _with_name_or_path(tokenizer)
    name = name or getattr(hf_model.config, "_name_or_path", None) or f"memlens/{model_type}"
    try:
        with quiet_transformers():
            bridge = TransformerBridge.boot_transformers(name, hf_model=hf_model, tokenizer=tokenizer)
    except ValueError as e:
        if "supported architecture" not in str(e):
            raise
        raise ModelLoadError(f"TransformerLens {_tl_version()} cannot boot model type {model_type!r} "
                             f"({type(hf_model).__name__}); memlens runs on the models its TransformerBridge boots "
                             f"(fully, with the component registry: {', '.join(SUPPORTED_MODEL_TYPES)})") from None
    return HookedModel(bridge, tokenizer, name=name, prepend_bos=prepend_bos, ground_truth=ground_truth)


def _tl_version() -> str:
    from importlib.metadata import version

    return version("transformer-lens")


def wrap(tl_model: nn.Module, tokenizer: Any = None, *, name: str | None = None, prepend_bos: bool = False) -> HookedModel:
    """Wrap an existing TransformerLens model: a TL 4 ``TransformerBridge`` or a TL 3 ``HookedTransformer``."""
    if not (hasattr(tl_model, "cfg") and hasattr(tl_model, "hook_dict") and hasattr(tl_model, "hooks")):
        raise ModelLoadError(
            f"wrap() takes a TransformerLens model (TransformerBridge or HookedTransformer), got {type(tl_model).__name__}; "
            "for a HuggingFace model use HookedModel.from_hf(model, tokenizer)"
        )
    return HookedModel(tl_model, tokenizer, name=name, prepend_bos=prepend_bos)


def from_pretrained(name: str, *, prepend_bos: bool = False, dtype: torch.dtype = torch.float32, **kwargs: Any) -> HookedModel:
    """Load a hub model (e.g. ``EleutherAI/gpt-neo-125M``) or a local folder written by ``save_pretrained``.

    A hub name is looked up in the local HuggingFace cache first; the hub is contacted only when
    it is reachable, so an offline machine gets an immediate, explicit error.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(name).expanduser()
    check_spec(name)
    if path.is_dir():
        return from_hf(load_hf_folder(path, dtype, **kwargs), load_tokenizer(path), name=str(path),
                       prepend_bos=prepend_bos)
    try:
        with quiet_transformers():
            tok = AutoTokenizer.from_pretrained(name, local_files_only=True)
            hf = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        if os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable():
            raise ModelLoadError(
                f"model {name!r} is not in the local HuggingFace cache and the hub "
                "(huggingface.co) cannot be reached from here. Download it where there is network "
                f"(`huggingface-cli download {name}`) and copy the cache, or load a local folder "
                "(HookedModel.from_pretrained('/path/to/model')), a GGUF file (HookedModel.from_gguf), "
                "or use the embedded model: HookedModel.organism()"
            ) from None
        try:
            with quiet_transformers():
                tok = AutoTokenizer.from_pretrained(name)
                hf = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **kwargs)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"could not load {name!r} from the hub: {e}") from None
    return from_hf(hf.eval(), tok, name=name, prepend_bos=prepend_bos)


def load_hf_folder(folder: Path, dtype: torch.dtype = torch.float32, **kwargs: Any) -> nn.Module:
    """The HuggingFace causal LM saved in ``folder`` (never booted), in eval mode; a missing
    config.json or a damaged weights file is a :class:`ModelLoadError` that says so."""
    from transformers import AutoModelForCausalLM

    if not (folder / "config.json").is_file():
        have = sorted(p.name for p in folder.iterdir())[:8]
        raise ModelLoadError(f"{folder}: no config.json, so not a HuggingFace model folder (it holds {have}); "
                             "give the folder that save_pretrained wrote")
    try:
        with quiet_transformers():
            return AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, **kwargs).eval()
    except Exception as e:  # transformers and safetensors raise many kinds for a damaged folder
        raise ModelLoadError(f"{folder}: the model could not be loaded ({type(e).__name__}: {e}); a weights file "
                             "may be truncated or damaged: save or copy the model again") from None


def load_tokenizer(folder: Path) -> Any:
    """The tokenizer saved in ``folder``; :class:`ModelLoadError` when it cannot be read."""
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:
        raise ModelLoadError(f"{folder}: its tokenizer could not be loaded ({type(e).__name__}: {e}); save the "
                             "tokenizer into the folder too (tokenizer.save_pretrained)") from None
    return _saved_tokenizer_if_different(tokenizer, folder)


#: texts a folder's tokenizer is checked on: digits, runs of spaces, newlines, tabs, accents, quotes
TOKENIZER_SAMPLE = ("In 2024, 12345 tokens  and   spaces\n\n\ttabs; naïve café — “quotes” don't I'll WE'RE "
                    "def f(x):\n    return x**2  # ok")


def _saved_tokenizer_if_different(tokenizer: Any, folder: Path) -> Any:
    """``tokenizer`` (what transformers built for ``folder``), unless it tokenizes
    :data:`TOKENIZER_SAMPLE` differently from the folder's own ``tokenizer.json`` (transformers 5
    builds a model family's tokenizer class, e.g. ``Qwen2Tokenizer``, and ignores the saved
    ``tokenizer_class``): then the saved tokenizer, with a warning that says so."""
    import warnings

    saved = folder / "tokenizer.json"
    if not saved.is_file():
        return tokenizer
    try:
        from tokenizers import Tokenizer

        want = Tokenizer.from_file(str(saved)).encode(TOKENIZER_SAMPLE, add_special_tokens=False).ids
        got = tokenizer(TOKENIZER_SAMPLE, add_special_tokens=False)["input_ids"]
    except Exception:  # a tokenizer.json the tokenizers library cannot read: keep transformers' choice
        return tokenizer
    if list(got) == list(want):
        return tokenizer
    from transformers import PreTrainedTokenizerFast

    with quiet_transformers():
        own = PreTrainedTokenizerFast.from_pretrained(str(folder))
    warnings.warn(f"{folder}: transformers built a {type(tokenizer).__name__} for this folder, which tokenizes text "
                  "differently from the folder's saved tokenizer.json; memlens uses the saved tokenizer "
                  f"({type(own).__name__} from tokenizer.json), so texts tokenize as they did when it was saved",
                  stacklevel=3)
    return own


def save_hf_folder(hf: nn.Module, tokenizer: Any, folder: Path) -> None:
    """``save_pretrained`` model and tokenizer into ``folder`` through a temporary folder and a
    rename, so that a reader never sees half of it."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    # a model loaded from GGUF is already dequantized; transformers still refuses to save it
    # while it carries its GGUF quantizer
    hf.hf_quantizer = None
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    try:
        with quiet_transformers():
            hf.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
        share_permissions(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub opens within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _with_name_or_path(tokenizer: Any) -> Any:
    """TransformerLens needs a tokenizer with a ``name_or_path``: give an in-memory one a folder."""
    if getattr(tokenizer, "name_or_path", None):
        return tokenizer
    from transformers import AutoTokenizer

    folder = tempfile.mkdtemp(prefix="memlens-tokenizer-")
    tokenizer.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)
