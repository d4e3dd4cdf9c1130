"""Adapters that change a model's prediction: an LCM-LoRA turns its base into a consistency model.

An LCM-LoRA (Luo et al. 2023, "LCM-LoRA") is trained as base + adapter under the ``consistency`` prediction
(:mod:`denoisekit.prediction`: EDM's ``c_in`` / ``c_noise`` with the consistency model's ``c_skip`` / ``c_out``,
so ``f(y, sigma_min) = y`` holds exactly), so loading the adapter alone would leave the base's ``edm``
boundary-free output. Its file says so in its safetensors metadata (:func:`prediction_metadata`): the
prediction it makes (``prediction``), the one it was trained over (``base_prediction``) and the sample
settings it was made for (``sample``: the consistency sampler, its NFE, guidance 1). :func:`check_prediction`
refuses it, in one line, on a model of another prediction (an ``eps`` base, or a model that is a consistency
model already: a second LCM adapter); :func:`with_prediction` rebuilds the model's
:class:`~denoisekit.prediction.Denoiser` around the same network with the new prediction and takes the
adapter's sample settings as the model's defaults. A plain LoRA file has none of these keys and changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ..prediction import Denoiser
from .model import LoadedModel

#: Metadata keys of an adapter that changes the prediction.
PREDICTION, BASE_PREDICTION, SAMPLE = "prediction", "base_prediction", "sample"
#: The sample settings an adapter may set as the model's defaults.
SAMPLE_KEYS = ("sampler", "nfe", "schedule", "cfg_scale")


def prediction_metadata(prediction: str, base_prediction: str, sample: Mapping[str, Any]) -> dict[str, str]:
    """The safetensors metadata of an adapter that turns a ``base_prediction`` model into a ``prediction`` one,
    to be sampled with ``sample`` (keys of :data:`SAMPLE_KEYS`)."""
    unknown = sorted(set(sample) - set(SAMPLE_KEYS))
    if unknown:
        raise ValueError(f"sample settings {unknown} unknown; allowed: {', '.join(SAMPLE_KEYS)}")
    return {PREDICTION: prediction, BASE_PREDICTION: base_prediction, SAMPLE: json.dumps(dict(sample))}


def check_prediction(model: LoadedModel, meta: Mapping[str, str], source: str) -> str | None:
    """The prediction an adapter with metadata ``meta`` gives ``model`` (None: it keeps the model's); a model
    whose prediction is not the adapter's ``base_prediction`` is a ``ValueError`` naming ``source``."""
    if PREDICTION not in meta:
        return None
    want, base = meta[PREDICTION], meta.get(BASE_PREDICTION)
    den = model.denoiser
    have = den.prediction if isinstance(den, Denoiser) else None
    if have is None or have != base:
        what = f"predicts {have!r}" if have is not None else f"is a {type(den).__name__}, not a Denoiser"
        raise ValueError(f"{source} is an LCM-LoRA: it turns a {base!r} model into a {want!r} one; this model "
                         f"{what}" + (" already" if have == want else ""))
    return want


def with_prediction(model: LoadedModel, prediction: str, meta: Mapping[str, str]) -> LoadedModel:
    """``model`` with its :class:`~denoisekit.prediction.Denoiser` rebuilt under ``prediction`` (same network,
    process, time input and sigma_data) and the adapter's ``sample`` settings as its defaults."""
    den = model.denoiser
    assert isinstance(den, Denoiser), "check_prediction first"
    new = Denoiser(den.net, den.process, prediction, time_input=den.time_input, sigma_data=den.sigma_data)
    new.train(den.training)
    sample = {k: v for k, v in json.loads(meta.get(SAMPLE, "{}")).items() if k in SAMPLE_KEYS}
    return replace(model, denoiser=new, defaults=replace(model.defaults, **sample))
