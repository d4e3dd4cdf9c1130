"""Textual inversion (Gal et al. 2023): new tokens for the frozen MiniLM text encoder, learned from images.

A concept is a placeholder token such as ``<my-star>`` with ``num_vectors`` new rows of MiniLM's word
embedding table (ids ``vocab_size + k``), initialised from an initializer word's embedding (the mean of its
word-pieces). The table the encoder reads is ``cat(word_embeddings.weight, new rows)``: the pretrained
rows are the frozen encoder's own tensor, untouched, so only the new rows can change.

- :class:`TokenEmbeddings` (an ``nn.Module``: its one parameter ``vectors`` trains and checkpoints) holds
  the tokens and their rows; :func:`attach` puts it on a :class:`~denoisekit.models.text.TextConditioned`
  network, whose encoder then reads prompts with the tokens (:class:`InvertedEncoder`).
- :func:`save_embeddings` / :func:`load_embeddings`: a small safetensors file (``vectors`` (T, V, dim),
  metadata: the token strings and the text encoder's weights hash, checked on load).

A prompt without a placeholder is encoded exactly as before (the shared encoder and its cache); one with a
placeholder runs MiniLM on ``inputs_embeds`` with gradients to the new rows. A prompt naming a ``<token>``
that is not loaded is an error (one line), never the word-pieces of ``<``, ``token``, ``>``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..io import file_sha256, save_tensors_atomic
from .text import MiniLMEncoder, TextConditioned, check_prompts, pad_tokens

FORMAT = "denoisekit-textual-inversion-1"
EMBEDDING_FILE = "embedding.safetensors"
#: What a placeholder token looks like: ``<name>``, name of letters, digits, ``-`` and ``_``.
TOKEN = re.compile(r"<[A-Za-z0-9_-]+>")
_HASHES: dict[str, str] = {}


def encoder_sha256(encoder: MiniLMEncoder) -> str:
    """The sha256 of the encoder's ``model.safetensors`` (what an embedding file records and is checked by)."""
    path = str(Path(encoder.model_dir) / "model.safetensors")
    if path not in _HASHES:
        _HASHES[path] = file_sha256(path)
    return _HASHES[path]


def _word_embeddings(encoder: MiniLMEncoder) -> nn.Embedding:
    encoder.load()
    return encoder._model.embeddings.word_embeddings


def check_tokens(tokens: Sequence[str]) -> list[str]:
    tokens = list(tokens)
    if not tokens:
        raise ValueError("textual inversion: give at least one placeholder token, e.g. '<my-star>'")
    for t in tokens:
        if not isinstance(t, str) or not TOKEN.fullmatch(t):
            raise ValueError(f"textual inversion: a placeholder token is '<name>' (letters, digits, - and _), got {t!r}")
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"textual inversion: placeholder tokens repeat: {tokens}")
    return tokens


class TokenEmbeddings(nn.Module):
    """``tokens`` (placeholder strings) and their rows ``vectors`` ``(len(tokens), num_vectors, dim)``."""

    def __init__(self, tokens: Sequence[str], vectors: Tensor):
        super().__init__()
        self.tokens = check_tokens(tokens)
        if vectors.dim() != 3 or vectors.shape[0] != len(self.tokens) or vectors.shape[1] < 1:
            raise ValueError(f"textual inversion: vectors must be ({len(self.tokens)}, num_vectors, dim), "
                             f"got {tuple(vectors.shape)}")
        self.vectors = nn.Parameter(vectors.detach().to(torch.float32).clone())

    @property
    def num_vectors(self) -> int:
        return self.vectors.shape[1]

    def encoder_over(self, base: MiniLMEncoder) -> InvertedEncoder:
        """``base`` with these tokens added: what :attr:`TextConditioned.encoder` returns when they are attached."""
        return InvertedEncoder(base, self)

    def extra_repr(self) -> str:
        return f"tokens={self.tokens}, num_vectors={self.num_vectors}, dim={self.vectors.shape[2]}"

    @classmethod
    def initialized(cls, encoder: MiniLMEncoder, tokens: Sequence[str], initializer: str | Sequence[str],
                    num_vectors: int = 1) -> TokenEmbeddings:
        """Every row of each token = the mean word-piece embedding of its initializer word (one for all, or one
        per token)."""
        tokens = check_tokens(tokens)
        inits = [initializer] * len(tokens) if isinstance(initializer, str) else list(initializer)
        if len(inits) != len(tokens):
            raise ValueError(f"textual inversion: {len(inits)} initializer words for {len(tokens)} tokens")
        if num_vectors < 1:
            raise ValueError(f"textual inversion: num_vectors must be >= 1, got {num_vectors}")
        table = _word_embeddings(encoder).weight
        rows = []
        for word in inits:
            ids = encoder._tokenizer(word, add_special_tokens=False)["input_ids"]
            if not ids:
                raise ValueError(f"textual inversion: the initializer {word!r} has no tokens")
            rows.append(table[ids].mean(0).detach())
        vectors = torch.stack(rows)[:, None].repeat(1, num_vectors, 1)
        return cls(tokens, vectors)

    def table(self, encoder: MiniLMEncoder) -> Tensor:
        """The extended word-embedding table: the pretrained rows (the encoder's own tensor), then the new ones."""
        base = _word_embeddings(encoder).weight
        return torch.cat([base, self.vectors.flatten(0, 1).to(base.device, base.dtype)])

    def token_ids(self, encoder: MiniLMEncoder, prompt: str) -> list[int]:
        """``[CLS] ... [SEP]`` ids of ``prompt`` with each placeholder as its ``num_vectors`` new ids, cut to
        ``max_tokens`` as the encoder cuts; an unknown ``<token>`` is a ValueError."""
        encoder.load()
        tok, vocab = encoder._tokenizer, _word_embeddings(encoder).num_embeddings
        ids, pos = [tok.cls_token_id], 0
        for m in TOKEN.finditer(prompt):
            if m.group() not in self.tokens:
                raise ValueError(f"prompt {prompt!r} uses the token {m.group()!r}, but the loaded embeddings are "
                                 f"{', '.join(self.tokens)}")
            ids += tok(prompt[pos:m.start()], add_special_tokens=False)["input_ids"]
            k = self.tokens.index(m.group())
            ids += list(range(vocab + k * self.num_vectors, vocab + (k + 1) * self.num_vectors))
            pos = m.end()
        ids += tok(prompt[pos:], add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
        if len(ids) > encoder.max_tokens:
            if not encoder.truncate:
                raise ValueError(f"prompt has {len(ids)} tokens, more than max_tokens={encoder.max_tokens}: {prompt!r}")
            ids = ids[:encoder.max_tokens - 1] + ids[-1:]
        return ids


def check_known_tokens(prompts: Sequence[str], tokens: Sequence[str] = ()) -> None:
    """A ValueError naming the first ``<token>`` of ``prompts`` that is not in ``tokens`` (loaded embeddings)."""
    for p in prompts:
        for m in TOKEN.finditer(p):
            if m.group() not in tokens:
                loaded = f"the loaded embeddings are {', '.join(tokens)}" if tokens else "no embedding is loaded"
                raise ValueError(f"prompt {p!r} uses the token {m.group()!r}, but {loaded} (sample --embedding FILE)")


class InvertedEncoder:
    """The :class:`~denoisekit.models.text.TextEncoder` of a shared MiniLM plus :class:`TokenEmbeddings`."""

    def __init__(self, base: MiniLMEncoder, embeddings: TokenEmbeddings):
        self.base, self.embeddings = base, embeddings
        self.dim, self.max_tokens = base.dim, base.max_tokens

    def encode(self, prompts: Sequence[str], device: Any = None) -> tuple[Tensor, Tensor]:
        prompts = check_prompts(prompts)
        check_known_tokens(prompts, self.embeddings.tokens)
        special = [p for p in dict.fromkeys(prompts) if TOKEN.search(p)]
        if not special:
            return self.base.encode(prompts, device)
        rows = {p: r[m] for p, r, m in zip(prompts, *self.base.encode(prompts)) if p not in special}
        table = self.embeddings.table(self.base)
        groups: dict[int, list[tuple[str, list[int]]]] = {}
        for p in special:
            ids = self.embeddings.token_ids(self.base, p)
            groups.setdefault(len(ids), []).append((p, ids))
        model = self.base._model
        with torch.inference_mode(False):
            for group in groups.values():  # equal lengths: no padding enters the transformer
                ids = torch.tensor([i for _, i in group], device=table.device)
                hidden = model(inputs_embeds=table[ids], attention_mask=torch.ones_like(ids)).last_hidden_state
                rows.update({p: h.float() for (p, _), h in zip(group, hidden)})
        return pad_tokens([rows[p] for p in prompts], device)

    __call__ = encode


def attach(net: nn.Module, embeddings: TokenEmbeddings | None) -> None:
    """Put ``embeddings`` on the :class:`~denoisekit.models.text.TextConditioned` network ``net`` (None:
    remove); the network must use the frozen ``minilm`` encoder."""
    if not isinstance(net, TextConditioned):
        raise ValueError(f"textual inversion needs a text-conditional network, got {type(net).__name__}")
    if embeddings is not None and net.encoder_name != "minilm":
        raise ValueError(f"textual inversion adds rows to MiniLM's embeddings; this network's text encoder is "
                         f"{net.encoder_name!r} (condition.encoder: minilm)")
    if embeddings is not None and embeddings.vectors.shape[2] != net.encoder.dim:
        raise ValueError(f"the embeddings are {embeddings.vectors.shape[2]}-d, the text encoder's tokens "
                         f"{net.encoder.dim}-d")
    net.token_embeddings = embeddings


def save_embeddings(embeddings: TokenEmbeddings, path: str | os.PathLike[str], encoder: MiniLMEncoder) -> Path:
    """Write the tokens' rows (``vectors``), the token strings and the encoder's hash, atomically."""
    path = Path(path)
    meta = {"format": FORMAT, "tokens": json.dumps(embeddings.tokens), "text_encoder": "minilm",
            "text_encoder_sha256": encoder_sha256(encoder)}
    save_tensors_atomic(path, {"vectors": embeddings.vectors.detach().cpu().contiguous()}, meta)
    return path


def load_embeddings(path: str | os.PathLike[str], encoder: MiniLMEncoder | None = None) -> TokenEmbeddings:
    """The :class:`TokenEmbeddings` of a file of :func:`save_embeddings` (a directory: its
    ``embedding.safetensors``); with ``encoder``, refused unless it is the encoder the file was made for."""
    from safetensors import safe_open

    p = Path(path)
    if p.is_dir():
        p = p / EMBEDDING_FILE
    if not p.is_file():
        raise FileNotFoundError(f"embedding file {str(p)!r} does not exist")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta, keys = dict(f.metadata() or {}), set(f.keys())
            vectors = f.get_tensor("vectors") if "vectors" in keys else None
    except Exception as e:
        raise ValueError(f"embedding file {str(p)!r}: cannot read safetensors ({e})") from None
    if meta.get("format") != FORMAT or vectors is None or keys != {"vectors"}:
        raise ValueError(f"embedding file {str(p)!r} is not a textual-inversion file of denoisekit "
                         f"(format {meta.get('format')!r}, tensors {sorted(keys)})")
    if encoder is not None and meta.get("text_encoder_sha256") != encoder_sha256(encoder):
        raise ValueError(f"embedding file {str(p)!r} was made for another text encoder (sha256 "
                         f"{str(meta.get('text_encoder_sha256'))[:12]}..., this one {encoder_sha256(encoder)[:12]}...)")
    try:
        return TokenEmbeddings(json.loads(meta["tokens"]), vectors)
    except (KeyError, json.JSONDecodeError, ValueError) as e:
        raise ValueError(f"embedding file {str(p)!r}: bad tokens or vectors ({e})") from None
