"""LoRA adapters on a loaded model: ``sample RUN --lora style.safetensors:0.8 --lora subject.safetensors:0.5``.

:func:`with_loras` loads adapter files (any layout of :mod:`denoisekit.models.lora_io`; a ``lora`` run's
directory means its ``lora.safetensors``) onto the :class:`LoadedModel`'s network, each at its weight, after
checking that each was made for this base (the weights hash the file records against the model's hash from
before any adapter, ``model.base_sha256 or model.sha256``, which the adapted model keeps as its
``base_sha256``: a ControlNet for the base still loads on top, :mod:`denoisekit.generation.control`).
The weights change later without reloading (:func:`set_lora_weights`); weight 0 is the base exactly.
An adapter that changes the prediction (an LCM-LoRA, :mod:`denoisekit.generation.lcm`) also rebuilds the
model's denoiser under the prediction it was trained with, and refuses a model of another prediction.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from torch import nn

from ..io import file_sha256
from ..models import lora, lora_io
from ..models.controlnet import ControlledDenoiser
from . import lcm
from .model import LoadedModel


def parse_lora(spec: str) -> tuple[str, float]:
    """``"FILE[:WEIGHT]"`` (weight default 1) as ``(FILE, WEIGHT)``; a bad weight is one line."""
    path, sep, tail = spec.rpartition(":")
    if not sep or "/" in tail or tail.endswith(".safetensors"):
        return spec, 1.0
    try:
        return path, float(tail)
    except ValueError:
        raise ValueError(f"--lora {spec!r}: the weight after ':' must be a number (FILE:0.8)") from None


def lora_file(path: str | os.PathLike[str]) -> Path:
    """The adapter file ``path`` names: the file itself, or a ``lora`` run directory's ``lora.safetensors``."""
    p = Path(path)
    if p.is_dir():
        if not (p / lora_io.ADAPTER_FILE).is_file():
            raise FileNotFoundError(f"--lora {str(p)!r}: a directory without {lora_io.ADAPTER_FILE} (not a "
                                    f"finished lora run)")
        return p / lora_io.ADAPTER_FILE
    return p


def network(model: LoadedModel) -> nn.Module:
    net = getattr(model.denoiser, "net", None)
    if not isinstance(net, nn.Module):
        raise ValueError(f"{model.name or 'this model'}: its denoiser has no network to put a LoRA adapter on")
    return net


def with_loras(model: LoadedModel, loras: Sequence[tuple[str | os.PathLike[str], float]]) -> LoadedModel:
    """``model`` with the adapters ``[(file, weight), ...]`` loaded onto its network (in place: the returned
    model shares it) and ``name`` / ``sha256`` saying so. Errors (another base, unknown keys, a missing file)
    are one line naming the file; the network is left as it was for the file that failed. Load adapters before
    control modules (``with_controlnets``): a ControlNet copies the base's encoder without them."""
    if not loras:
        return model
    if isinstance(model.denoiser, ControlledDenoiser):
        raise ValueError(f"{model.name or 'this model'} already has control modules: load LoRA adapters first, "
                         f"then ControlNets and T2I-Adapters")
    net, base = network(model), model.base_sha256 or model.sha256
    digest = hashlib.sha256((model.sha256 or "").encode())
    shown, current = [], model
    for path, weight in loras:
        file = lora_file(path)
        meta = lora_io.read_adapter(file)[1]
        prediction = lcm.check_prediction(current, meta, f"LoRA file {str(file)!r}")  # before the network changes
        stem = file.parent.name if file.name == lora_io.ADAPTER_FILE else file.stem
        name, i = stem.replace(".", "_") or "lora", 2
        while name in lora.adapters(net):
            name, i = f"{stem.replace('.', '_')}_{i}", i + 1
        lora_io.load_adapter(net, file, name, float(weight), base_sha256=base)
        digest.update(f"|{name}|{weight!r}|".encode() + file_sha256(file).encode())
        shown.append(f"{file}:{weight:g}")
        if prediction is not None:
            current = lcm.with_prediction(current, prediction, meta)
    return replace(current, name=f"{model.name} + lora {', '.join(shown)}", sha256=digest.hexdigest(),
                   base_sha256=base)


def set_lora_weights(model: LoadedModel, weights: Mapping[str, float]) -> None:
    """Change the active adapters' weights (by adapter name, see :func:`lora_names`) without reloading
    (``model.sha256`` still names the weights :func:`with_loras` loaded)."""
    lora.set_weights(network(model), weights)


def lora_names(model: LoadedModel) -> list[str]:
    return list(lora.adapters(network(model)))


def with_embeddings(model: LoadedModel, files: Sequence[str | os.PathLike[str]]) -> LoadedModel:
    """``model`` with the textual-inversion token files loaded (``sample --embedding FILE``; a
    ``textual_inversion`` run's directory means its ``embedding.safetensors``): their tokens join one table
    of new MiniLM rows on the model's text network (in place), ``name`` / ``sha256`` saying so. A file made
    for another text encoder, or a token loaded twice, is one line naming the file."""
    import torch

    from ..models import text_inversion as ti

    if not files:
        return model
    net = network(model)
    base = getattr(net, "encoder", None)
    base = getattr(base, "base", base)
    if not isinstance(base, ti.MiniLMEncoder):
        raise ValueError(f"--embedding needs a text model on the MiniLM encoder; {model.name or 'this model'} "
                         f"has {type(base).__name__ if base is not None else 'no text encoder'}")
    loaded = [ti.load_embeddings(f, base) for f in files]
    have = getattr(net, "token_embeddings", None)
    parts = ([have] if have is not None else []) + loaded
    if len({p.num_vectors for p in parts}) > 1:
        raise ValueError(f"--embedding: the files have different vectors per token "
                         f"({sorted({p.num_vectors for p in parts})}); load files of one num_vectors together")
    tokens = [t for p in parts for t in p.tokens]
    dup = sorted({t for t in tokens if tokens.count(t) > 1})
    if dup:
        raise ValueError(f"--embedding: token {dup[0]} is loaded twice ({', '.join(map(str, files))})")
    device = next(net.parameters()).device
    ti.attach(net, ti.TokenEmbeddings(tokens, torch.cat([p.vectors.detach() for p in parts])).to(device)
              .requires_grad_(False))
    digest = hashlib.sha256((model.sha256 or "").encode())
    for f in files:
        file = Path(f) / ti.EMBEDDING_FILE if Path(f).is_dir() else Path(f)
        digest.update(b"|embedding|" + file_sha256(file).encode())
    return replace(model, name=f"{model.name} + embedding {', '.join(map(str, files))}", sha256=digest.hexdigest(),
                   base_sha256=model.base_sha256 or model.sha256)


def embedding_tokens(model: LoadedModel) -> list[str]:
    """The textual-inversion tokens loaded on ``model`` (none: ``[]``)."""
    net = getattr(model.denoiser, "net", None)
    emb = getattr(net, "token_embeddings", None)
    return list(emb.tokens) if emb is not None else []
