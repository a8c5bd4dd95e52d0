"""HookedModel: one small protocol over TransformerLens models.

It wraps a TransformerLens 4 ``TransformerBridge`` (or a TransformerLens 3 ``HookedTransformer``)
and gives every analysis the same few things: tokenization without a BOS by default (as in the
paper), logits from a LongTensor, the component registry, hook-point helpers that always remove
their hooks, and a plain (never-booted) HuggingFace twin that shares the weights, for KV-cached
greedy decoding where the bridge's cache is wrong.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any, Callable, Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from memlens.core.compat import keep_fp32_attention, plain_twin, strip_bridge_name, sync_fused_qkv
from memlens.core.components import ComponentRegistry, build_hf_registry, build_tl3_registry
from memlens.core.errors import HookError, InputError
from memlens.core.hook_points import HookFn, HookPoints, NamesFilter, preserved_grads  # noqa: F401 (re-exported)
from memlens.core.precision import autocast, check_precision

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HookedModel(HookPoints):
    """A TransformerLens model with the helpers memlens analyses need.

    Build one with :meth:`organism`, :meth:`from_pretrained`, :meth:`from_hf`, :meth:`from_gguf`
    or :meth:`wrap`; the constructor is the low-level path.
    """

    def __init__(
        self,
        tl_model: nn.Module,
        tokenizer: Any = None,
        *,
        name: str | None = None,
        prepend_bos: bool = False,
        ground_truth: Any = None,
    ) -> None:
        self.tl_model = tl_model
        self.tokenizer = tokenizer if tokenizer is not None else getattr(tl_model, "tokenizer", None)
        self.name = name or getattr(getattr(tl_model, "cfg", None), "model_name", None) or type(tl_model).__name__
        self.prepend_bos = prepend_bos
        self.ground_truth = ground_truth
        self._precision = check_precision(os.environ.get("MEMLENS_PRECISION") or "fp32", "MEMLENS_PRECISION")
        self._weight_versions: tuple | None = None
        self.hf_model: nn.Module | None = getattr(tl_model, "original_model", None) if _is_bridge(tl_model) else None
        if self.hf_model is not None:
            keep_fp32_attention(self.hf_model)
        self._registry: ComponentRegistry | None = None
        self._plain: nn.Module | None = None
        self._block_arity: list[int] | None = None
        cfg = tl_model.cfg
        self.n_layers: int = int(cfg.n_layers)
        self.n_heads: int = int(cfg.n_heads)
        self.d_head: int = int(cfg.d_head)
        self.d_model: int = int(cfg.d_model)
        self.d_mlp: int | None = int(cfg.d_mlp) if getattr(cfg, "d_mlp", None) else None
        self.vocab_size: int = int(cfg.d_vocab)
        n_ctx = getattr(cfg, "n_ctx", None)
        if self.hf_model is not None:
            n_ctx = getattr(self.hf_model.config, "max_position_embeddings", None) or n_ctx
        self.n_ctx: int | None = int(n_ctx) if n_ctx else None
        self.tl_model.eval()

    # --- basic properties --------------------------------------------------------------------
    @property
    def organism_info(self) -> Any:
        """The ground truth of an embedded organism (alias of :attr:`ground_truth`)."""
        return self.ground_truth

    @property
    def is_bridge(self) -> bool:
        return _is_bridge(self.tl_model)

    @property
    def model_type(self) -> str:
        """HuggingFace ``model_type`` (``gpt_neo``, ``gpt2``, ...) or ``tl3`` for a HookedTransformer."""
        return self.hf_model.config.model_type if self.hf_model is not None else "tl3"

    @property
    def device(self) -> torch.device:
        return next(self.tl_model.parameters()).device

    # --- compute precision (memlens.core.precision) ----------------------------------------
    @property
    def precision(self) -> str:
        """How forward and backward passes compute: ``fp32`` (exact; the default, or
        ``$MEMLENS_PRECISION``) or ``bf16-mixed`` (bfloat16 matmuls under autocast, float32 weights,
        float32 logits). Set it, or use :meth:`using_precision` for a block."""
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        self._precision = check_precision(value)

    @contextlib.contextmanager
    def using_precision(self, precision: str | None) -> Iterator["HookedModel"]:
        """The model at ``precision`` for the block (unchanged when None; the previous precision
        comes back on exit, also on error). Under ``bf16-mixed`` the block also keeps the bfloat16
        copies of the weights that autocast makes from one forward pass to the next (cast once,
        not once per pass); a weight changed in place (its version counter moves) or switched to
        or from ``requires_grad`` is cast again. Every analysis call runs inside one."""
        before = self._precision
        if precision is not None:
            self.precision = precision
        try:
            if self._precision == "fp32":
                yield self
            else:  # an outer autocast region, disabled: autocast's weight cache lives until it ends
                with torch.autocast(self.device.type, enabled=False):
                    yield self
        finally:
            self._precision = before
            self._weight_versions = None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The compute context of the model's precision on its device (nothing for ``fp32``):
        forward passes of the TransformerLens model and of the HuggingFace twin run inside it.
        Under ``bf16-mixed``, autocast's cached bfloat16 weights are dropped first when any weight
        changed since the last pass."""
        if self._precision != "fp32":
            versions = tuple((id(p), p._version, p.requires_grad) for p in self.tl_model.parameters())
            if versions != getattr(self, "_weight_versions", None):
                torch.clear_autocast_cache()
                self._weight_versions = versions
        return autocast(self.device, self._precision)

    @property
    def components(self) -> ComponentRegistry:
        """The component registry (built on first use)."""
        if self._registry is None:
            if self.hf_model is not None:
                params = {strip_bridge_name(n): p for n, p in self.hf_model.named_parameters()}

                def get(name: str) -> nn.Parameter:
                    if name not in params:
                        raise InputError(f"expected parameter {name!r} in {self.name}; is this a supported architecture?")
                    return params[name]

                n_kv = getattr(self.hf_model.config, "num_key_value_heads", None)
                self._registry = build_hf_registry(
                    self.model_type, get, self.n_layers, self.n_heads, self.d_head, n_kv
                )
            else:
                self._registry = build_tl3_registry(self.tl_model)
        return self._registry

    def named_parameters(self) -> dict[str, nn.Parameter]:
        """Parameters by their names in the booted model (bridge prefixes removed), or TL names for TL3."""
        if self.hf_model is not None:
            return {strip_bridge_name(n): p for n, p in self.hf_model.named_parameters()}
        return dict(self.tl_model.named_parameters())

    # --- tokens ------------------------------------------------------------------------------
    def to_tokens(self, text: str, prepend_bos: bool | None = None) -> Int[Tensor, "1 pos"]:
        """Token ids of ``text`` as ``[1, pos]``; no BOS unless ``prepend_bos`` (default: the model's)."""
        if self.tokenizer is None:
            raise InputError(f"{self.name} has no tokenizer; pass token ids instead of text")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = self.prepend_bos if prepend_bos is None else prepend_bos
        if bos:
            ids = [self.tokenizer.bos_token_id] + ids
        return torch.tensor([ids], dtype=torch.long, device=self.device)

    def to_string(self, tokens: Tensor | Sequence[int]) -> str | list[str]:
        """Decode ``[pos]`` ids to a string, or ``[batch, pos]`` ids to a list of strings."""
        t = torch.as_tensor(tokens)
        if t.ndim == 2:
            return [self.tokenizer.decode(row.tolist()) for row in t]
        return self.tokenizer.decode(t.tolist())

    def to_str_tokens(self, tokens: Tensor | Sequence[int]) -> list[str]:
        """One decoded string per token id of a ``[pos]`` sequence."""
        return [self.tokenizer.decode([int(t)]) for t in torch.as_tensor(tokens).flatten()]

    # --- forward -----------------------------------------------------------------------------
    def __call__(self, tokens: Tensor, **kwargs: Any) -> Float[Tensor, "batch pos vocab"]:
        return self.forward(tokens, **kwargs)

    def forward(self, tokens: Tensor, attention_mask: Tensor | None = None,
                positions_from: int = 0) -> Float[Tensor, "batch pos vocab"]:
        """Logits through the TransformerLens model, so that active hooks apply.

        Args:
            tokens: token ids ``[batch, pos]`` (or ``[pos]``); anything else is refused with an
                :class:`~memlens.core.errors.InputError` (so it is not typed ``Int[...]`` here).
            attention_mask: optional ``[batch, pos]`` mask (1 = attend).
            positions_from: return the logits of positions ``positions_from`` onwards only (under
                ``bf16-mixed`` only those are converted to float32).

        Returns:
            Logits ``[batch, pos - positions_from, vocab]``, float32 under ``bf16-mixed``.
        """
        tokens = self._check_tokens(tokens)
        kwargs = {} if attention_mask is None else {"attention_mask": attention_mask.to(self.device)}
        return self._logits_of(lambda: self.tl_model(tokens, **kwargs), positions_from)

    def _logits_of(self, run: Callable[[], Tensor], positions_from: int = 0) -> Float[Tensor, "batch pos_out vocab"]:
        """The logits ``run()`` returns, run at this model's precision: under ``bf16-mixed`` inside
        :meth:`autocast`, and the logits of positions ``positions_from`` onwards converted to float32."""
        if self._precision == "fp32":
            logits = run()
            return logits[:, positions_from:] if positions_from else logits
        with self.autocast():
            logits = run()
        return logits[:, positions_from:].float()

    def forward_from(self, residual: Float[Tensor, "batch pos d_model"], layer: int,
                     positions_from: int = 0) -> Float[Tensor, "batch pos_out vocab"]:
        """Logits from the residual stream entering block ``layer`` (``blocks.{layer}.hook_resid_pre``),
        computing blocks ``layer`` onwards only; active hooks apply. The same logits as
        :meth:`forward` on the tokens that gave ``residual``, at the cost of the upper blocks: for
        methods that intervene at one layer many times (see :mod:`memlens.core.partial_forward`)."""
        from memlens.core.partial_forward import forward_from

        return forward_from(self, residual, layer, positions_from)

    def _check_tokens(self, tokens: Tensor) -> Tensor:
        if not isinstance(tokens, Tensor) or tokens.dtype not in (torch.long, torch.int, torch.int32, torch.int64):
            raise InputError("model input must be a LongTensor of token ids [batch, pos]; use to_tokens(text)")
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2:
            raise InputError(f"model input must be [batch, pos], got shape {tuple(tokens.shape)}")
        if tokens.numel() and (int(tokens.max()) >= self.vocab_size or int(tokens.min()) < 0):
            raise InputError(
                f"token id {int(tokens.max())} outside the vocabulary [0, {self.vocab_size}) of {self.name}"
            )
        if self.n_ctx is not None and tokens.shape[1] > self.n_ctx:
            raise InputError(f"{tokens.shape[1]} tokens exceed the model's context of {self.n_ctx}")
        return tokens.long().to(self.device)

    def plain_model(self) -> nn.Module:
        """A never-booted HuggingFace model sharing this model's parameters (no hooks run in it).

        Used for KV-cached decoding: TransformerLens 4.3's bridge cache is wrong for GPT-2 and
        Llama with transformers >= 5.14. It costs no weight memory (parameters are shared).
        """
        if self.hf_model is None:
            raise InputError("a TransformerLens 3 model has no HuggingFace twin")
        if self._plain is None:
            self._plain = plain_twin(self.hf_model)
            keep_fp32_attention(self._plain)
        sync_fused_qkv(self.hf_model, self.n_heads)
        return self._plain

    def to(self, device: "str | torch.device | None" = None, dtype: "str | torch.dtype | None" = None) -> "HookedModel":
        """Move the model to ``device`` and/or cast it to ``dtype`` (``"bfloat16"``, ``"float16"``,
        ``"float32"`` or a torch dtype), in place; returns the model."""
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise InputError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
            dtype = DTYPES[dtype]
        if device is not None:
            try:
                torch.empty(0, device=device)
            except (RuntimeError, AssertionError) as e:
                raise InputError(f"device {device!r} is not available here ({e})") from None
        if (device is None or torch.device(device) == self.device) and (dtype is None or dtype == self.dtype):
            return self
        with contextlib.redirect_stdout(io.StringIO()):  # TransformerLens prints "Moving model to device"
            self.tl_model.to(device=device, dtype=dtype)
        self._plain = None  # the twin holds the old buffers; rebuilt on next use
        return self

    @property
    def dtype(self) -> torch.dtype:
        return next(self.tl_model.parameters()).dtype

    def save_pretrained(self, folder: "str | os.PathLike[str]") -> "os.PathLike[str]":
        """Save the model's current weights (e.g. after planting or editing) and its tokenizer as a
        HuggingFace folder that ``load_model(folder)`` / ``--model folder`` loads back.

        The never-booted twin is what gets saved (booting renames parameters, so the booted model
        must never be saved itself). The folder is written through a temporary folder and a rename.

        Args:
            folder: the folder to write (replaced if it exists).

        Returns:
            The folder.
        """
        from pathlib import Path

        if self.hf_model is None:
            raise InputError("save_pretrained needs a HuggingFace-backed model; a TransformerLens 3 model has none")
        if self.tokenizer is None:
            raise InputError(f"{self.name} has no tokenizer to save")
        folder = Path(folder)
        _loader("save_hf_folder")(self.plain_model(), self.tokenizer, folder)
        return folder

    def __repr__(self) -> str:
        return (
            f"HookedModel({self.name!r}, type={self.model_type}, layers={self.n_layers}, "
            f"heads={self.n_heads}, d_model={self.d_model}, vocab={self.vocab_size})"
        )

    # --- loading (implemented in the loading layer, which registers itself: register_loaders) --
    @classmethod
    def from_pretrained(cls, name: str, **kwargs: Any) -> "HookedModel":
        """A hub model by name (see :func:`memlens.loading.from_pretrained`)."""
        return _loader("from_pretrained")(name, **kwargs)

    @classmethod
    def from_hf(cls, hf_model: nn.Module, tokenizer: Any, **kwargs: Any) -> "HookedModel":
        """A HuggingFace model built in memory (see :func:`memlens.loading.from_hf`)."""
        return _loader("from_hf")(hf_model, tokenizer, **kwargs)

    @classmethod
    def from_gguf(cls, path: "str | os.PathLike[str]", **kwargs: Any) -> "HookedModel":
        """A GGUF file, dequantized (see :func:`memlens.loading.from_gguf`)."""
        return _loader("from_gguf")(path, **kwargs)

    @classmethod
    def wrap(cls, tl_model: nn.Module, tokenizer: Any = None, **kwargs: Any) -> "HookedModel":
        """An already built TransformerLens model (see :func:`memlens.loading.wrap`), with its
        tokenizer (the model's own when None)."""
        return _loader("wrap")(tl_model, tokenizer, **kwargs)

    @classmethod
    def organism(cls, size: str = "default", seed: int = 0, cache_dir: str | None = None,
                 progress: bool = True, base: str | None = None) -> "HookedModel":
        """The embedded organism of ``size``, built on first use and cached; the same as
        ``load_model("organism")``, ``load_model("organism-tiny")``, ``load_model("organism-smollm2")``.

        Args:
            size: ``default`` (4 layers, the study's model), ``tiny`` (for tests), ``smollm2``
                (SmolLM2-135M with planted paragraphs) or ``smollm2-micro``.
            base: ``"smollm2"``: the SmolLM2 organism (same as ``size="smollm2"``).
            seed: the build's seed (one cached model per seed).
            cache_dir: cache folder (default ``$MEMLENS_CACHE`` or ``~/.cache/memlens``).
            progress: show the build's progress bar.

        Returns:
            The organism, with its ground truth as :attr:`ground_truth`.
        """
        if base is not None:
            if base != "smollm2":
                raise InputError(f"unknown organism base {base!r}; the embedded bases are: smollm2")
            size = "smollm2" if size == "default" else size
        return _loader("load_model")("organism" if size == "default" else f"organism-{size}", seed=seed, cache_dir=cache_dir,
                          progress=progress)


_LOADERS: dict[str, Any] = {}


def register_loaders(**functions: Any) -> None:
    """Called by :mod:`memlens.loading` on import: the functions behind ``HookedModel.from_*``,
    ``organism`` and ``save_pretrained`` (the core layer does not import the loading layer)."""
    _LOADERS.update(functions)


def _loader(name: str) -> Any:
    if name not in _LOADERS:
        raise HookError(f"HookedModel.{name} needs memlens.loading; import memlens (not memlens.core alone)")
    return _LOADERS[name]


def _is_bridge(tl_model: nn.Module) -> bool:
    return "original_model" in getattr(tl_model, "__dict__", {})


@contextlib.contextmanager
def preserved_weights(module: nn.Module) -> Iterator[None]:
    """Restore every parameter's values on exit (a copy of the weights is held meanwhile)."""
    saved = [(p, p.detach().clone()) for p in module.parameters()]
    try:
        yield
    finally:
        with torch.no_grad():
            for p, v in saved:
                p.copy_(v)
