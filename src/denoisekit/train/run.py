"""The run directory: its layout, what sampling needs from it (:func:`run_info`), and loading its model
(:func:`load_run`) and, for a latent run, its decoder (:func:`load_latent_decoder`); all of it as one
:class:`~denoisekit.generation.LoadedModel` (:func:`load_model`).

A run directory holds::

    config.yaml               the resolved config (enough to rebuild everything)
    checkpoints/step_*/       safetensors weights + JSON state, the last train.keep_last kept
    log.csv, loss.png         the training log and loss curve
    samples.png, samples/     preview grids
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch

from .._utils import check_choice
from ..conditioning import condition_kind
from ..generation import LoadedModel, TrainedSteps
from ..io import load_json, load_tensors
from ..models.autoencoder import Autoencoder
from ..prediction import Denoiser
from .autoencoder_io import META, load_autoencoder
from .build import build_denoiser, build_model
from ..engine import lineage
from ..engine.checkpoint import STATE_FILE, latest_checkpoint, load_delta, load_weights
from .config import Config, load_config
from .latent import weights_sha256

RUN_CONFIG, CHECKPOINTS, SAMPLES = "config.yaml", "checkpoints", "samples"


def run_info(run_dir: str | os.PathLike[str], *, checkpoint: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """What sampling a run needs besides its config: ``step``, ``image_shape`` ``(C, H, W)`` (of the latents in
    a latent run), the dataset's class names ``classes`` (may be empty), for a latent run ``latent`` (the
    autoencoder's :func:`~denoisekit.train.latent.latent_record`) and for a few-step student ``fewstep`` (its
    recipe's record: method, sampler, steps, grid), from ``checkpoint`` (default: the latest)."""
    ckpt = Path(checkpoint) if checkpoint is not None else latest_checkpoint(Path(run_dir) / CHECKPOINTS)
    if ckpt is None:
        raise FileNotFoundError(f"{Path(run_dir) / CHECKPOINTS}: no checkpoint")
    state = load_json(ckpt / STATE_FILE)
    try:
        return {"step": int(state["step"]), "image_shape": tuple(int(v) for v in state["image_shape"]),
                "classes": [str(c) for c in state.get("classes", [])],
                **({"latent": state["latent"]} if state.get("latent") else {}),
                **({"fewstep": state["fewstep"]} if isinstance(state.get("fewstep"), dict) else {})}
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{ckpt / STATE_FILE}: malformed ({e!r})") from None


def load_run(run_dir: str | os.PathLike[str], *, weights: Literal["ema", "model"] = "ema",
             checkpoint: str | os.PathLike[str] | None = None,
             check_depends: bool = True, device: str | torch.device = "cpu") -> tuple[Denoiser, Config]:
    """The trained denoiser (EMA weights by default, eval mode, on ``device``: default the CPU) and config of a
    run directory.
    A latent run's denoiser works on latents: decode its samples with ``load_latent_decoder(run_dir)``
    (:mod:`denoisekit.train.latent`).

    ``checkpoint`` picks a checkpoint directory (default: the latest). Missing files raise
    ``FileNotFoundError`` and corrupt ones ``ValueError``, naming the path. Nothing is unpickled.
    A run that stores only a delta over a base run (``init.trainable``) is composed with that base. A run whose
    recorded dependencies (``init.from_run``, ``teacher.run``) changed since is refused, unless
    ``check_depends=False`` (a base it needs for a delta is always checked).
    """
    check_choice("weights", weights, ("ema", "model"))
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {str(run)!r} does not exist")
    cfg_path = run / RUN_CONFIG
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: missing (is {str(run)!r} a denoisekit training run?)")
    config = load_config(cfg_path)
    ckpt = Path(checkpoint) if checkpoint is not None else latest_checkpoint(run / CHECKPOINTS)
    if ckpt is None:
        raise FileNotFoundError(f"{run / CHECKPOINTS}: no checkpoint (did training stop before its first save?)")
    path = ckpt / f"{weights}.safetensors"
    net = build_model(config)
    tensors = load_tensors(path)
    state = load_json(ckpt / STATE_FILE)
    if check_depends and isinstance(state, dict):
        lineage.check(state.get("depends", []), f"cannot load {run} (load_run(..., check_depends=False) loads it anyway)")
    if isinstance(state, dict) and state.get("controlnet_of"):
        raise ValueError(f"{run} holds a ControlNet / T2I-Adapter, not a model: sample its base "
                         f"(init.from_run) with --controlnet {run}")
    role = (state.get("delta_of") or state.get("lora_of") or state.get("embedding_of")) if isinstance(state, dict) else None
    if role:  # only the trained part (some tensors, or a LoRA adapter): compose it with its base
        base = next((d for d in state.get("depends", []) if d.get("role") == role), None)
        if base is None:
            raise ValueError(f"{ckpt / STATE_FILE}: a delta over {role!r} that records no such run")
        lineage.check([base], f"cannot load {run}")
        base_ckpt = lineage.weights_file(base).parent
        base_net = load_run(base["run"], weights=base["weights"], checkpoint=base_ckpt)[0].net
        net.load_state_dict(base_net.state_dict())
        if state.get("lora_of"):  # the lora recipe's adapter, at weight 1 (sample BASE --lora RUN:W for others)
            from ..models.lora import LoraConfig, add_adapter

            add_adapter(net, LoraConfig.from_dict(state["lora"]), "default", trainable=False)
        if state.get("embedding_of"):  # textual inversion's new token rows (sample BASE --embedding FILE too)
            from ..models.text_inversion import TokenEmbeddings, attach

            vectors = tensors["token_embeddings.vectors"]
            attach(net, TokenEmbeddings(state["tokens"], torch.zeros_like(vectors)).requires_grad_(False))
        load_delta(net, tensors, str(path))
    else:
        load_weights(net, tensors, str(path))
    return build_denoiser(config, net).to(device).eval().requires_grad_(False), config


def load_latent_decoder(run_dir: str | os.PathLike[str], *,
                        checkpoint: str | os.PathLike[str] | None = None,
                        device: str | torch.device = "cpu") -> Autoencoder | None:
    """The autoencoder that turns a latent run's samples into images (eval mode, on ``device``), or None for a
    pixel-space run. Looks for it at the configured path (relative to the working directory), then the
    path resolved at training time and relative to the run directory; refuses one whose weights differ
    from the ones the run was trained with."""
    run = Path(run_dir)
    config = load_config(run / RUN_CONFIG)
    if config.latent.autoencoder is None:
        return None
    ckpt = Path(checkpoint) if checkpoint is not None else latest_checkpoint(run / CHECKPOINTS)
    record = load_json(ckpt / STATE_FILE).get("latent") if ckpt is not None else None
    record = record if isinstance(record, dict) else {}
    tried = [Path(config.latent.autoencoder)]
    tried += [Path(record["resolved"])] if record.get("resolved") else []
    tried += [run / config.latent.autoencoder]
    found = next((p for p in tried if (p / META).is_file()), None)
    if found is None:
        raise FileNotFoundError(f"{run}: its autoencoder is missing (looked for {META} in "
                                f"{', '.join(dict.fromkeys(map(str, tried)))}); put it back at latent.autoencoder")
    ae = load_autoencoder(found)
    if record.get("sha256") and weights_sha256(ae) != record["sha256"]:
        raise ValueError(f"the autoencoder at {found} is not the one {run} was trained with (weights sha256 "
                         f"{weights_sha256(ae)[:12]}..., the run recorded {record['sha256'][:12]}...)")
    return ae.to(device)


def run_condition(config: Config, image_shape: tuple[int, ...]) -> Any:
    """The run's condition kind (:mod:`denoisekit.conditioning`), as sampling sees it: no dropout."""
    return condition_kind(config.condition.kind)(config.condition_options(), num_classes=config.num_classes,
                                                 image_shape=image_shape)


def trained_steps(info: dict[str, Any]) -> TrainedSteps | None:
    """A few-step student's own grid from its :func:`run_info` (``fewstep.sigmas``), or None: progressive
    distillation records one; consistency students sample on any grid."""
    rec = info.get("fewstep") or {}
    if "sigmas" not in rec:
        return None
    return TrainedSteps(str(rec.get("method", "few-step")), str(rec.get("sampler", "ddim")),
                        torch.tensor(rec["sigmas"], dtype=torch.float64))


def load_model(run_dir: str | os.PathLike[str], *, weights: Literal["ema", "model"] = "ema",
               checkpoint: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """A run directory as a :class:`~denoisekit.generation.LoadedModel` for
    :func:`~denoisekit.generation.generate`: :func:`load_run`'s denoiser, the condition, the decoder of a
    latent run, the shape and class names of :func:`run_info`, ``sample.prompts`` as caption examples, the
    ``sample`` section as defaults and the SHA-256 of the denoiser's weights; denoiser and decoder on ``device``
    (``generate()`` samples there). Errors as :func:`load_run`."""
    denoiser, config = load_run(run_dir, weights=weights, checkpoint=checkpoint, device=device)
    info = run_info(run_dir, checkpoint=checkpoint)
    return LoadedModel(denoiser, info["image_shape"], condition=run_condition(config, info["image_shape"]),
                       decoder=load_latent_decoder(run_dir, checkpoint=checkpoint, device=device),
                       classes=tuple(info["classes"]),
                       captions=tuple(config.sample.prompts), num_classes=config.num_classes,
                       defaults=config.sample, name=str(run_dir), sha256=weights_sha256(denoiser), config=config,
                       trained_steps=trained_steps(info))
