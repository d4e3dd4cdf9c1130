"""diffusers model folders in and out: :func:`import_diffusers` makes a run of one, :func:`export_diffusers` writes one.

A diffusers folder (``save_pretrained`` layout) holds a U-Net and a scheduler::

    DIR/unet/config.json                        UNet2DModel or UNet2DConditionModel (or at DIR itself)
    DIR/unet/diffusion_pytorch_model.safetensors
    DIR/scheduler/scheduler_config.json         the process and prediction type (or DIR/scheduler_config.json)

**Import** keeps the network exactly as its authors built it (:class:`~denoisekit.models.DiffusersUNet` runs
diffusers' own module) and reads the scheduler as a denoisekit process: DDPM's discrete chain with diffusers'
``beta_schedule`` (``linear``, ``scaled_linear``, ``squaredcos_cap_v2`` = Nichol & Dhariwal's cosine) and
``rescale_betas_zero_snr`` (Lin et al. 2023), ``prediction_type`` ``epsilon`` / ``v_prediction`` / ``sample`` as
``eps`` / ``v`` / ``x0``. The run is an ordinary run directory (one checkpoint, step 0), so every sampler,
guidance and pipeline uses it.

**Export** rewrites a denoisekit :class:`~denoisekit.models.unet.UNet` as a ``UNet2DModel`` with the same function:

- residual blocks: ``resnet_time_scale_shift="scale_shift"`` is ADM's AdaGN (our second GroupNorm has no affine:
  diffusers' gets weight 1, bias 0); attention blocks: ``AttnDownBlock2D`` / ``AttnUpBlock2D`` with the fused qkv
  split into ``to_q``, ``to_k``, ``to_v``; the mid block's attention needs ``attn_norm_num_groups`` given;
- the time embedding: ours is 128 Fourier features with log-spaced frequencies (:mod:`denoisekit.models.layers`),
  which diffusers' ``positional`` embedding (frequencies ``10000^(-k/(d/2 - shift))``, angles in float32) cannot
  reproduce. ``time_embedding_type="learned"`` can: one row per training step holding our features at that step
  (computed in float64), ``linear_1`` our first layer padded with zero columns. Exact at the integer timesteps
  diffusers' DDPM-family schedulers give; it needs ``block_out_channels[0] >= 128`` (the row width);
- one GroupNorm group count everywhere (diffusers' ``norm_num_groups``), one ``layers_per_block``, the DDPM
  process, and an eps, v or x0 prediction. Anything else is one ``ValueError`` naming the option.

Both write their output atomically: a temporary sibling directory renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..engine.checkpoint import save_checkpoint
from ..io import file_sha256, load_json, load_tensors, write_json_atomic
from ..models.diffusers_unet import DIFFUSERS_CLASSES, DiffusersUNet, DiffusersUNetConfig
from ..models.layers import fourier_features
from ..models.unet import AttentionBlock, Block, ResBlock, UNet, Upsample
from ..process import DiscreteDDPM
from ..train.config import (Config, ConditionConfig, ModelConfig, ProcessConfig, SampleConfig, TrainConfig,
                            save_config)
from ..train.model_card import write_model_card
from ..train.run import CHECKPOINTS, RUN_CONFIG, load_run, run_info
from .diffusers import ddpm_config

WEIGHTS_FILE, CONFIG_FILE, SCHEDULER_FILE = "diffusion_pytorch_model.safetensors", "config.json", "scheduler_config.json"
#: diffusers' ``beta_schedule`` -> :class:`~denoisekit.process.DiscreteDDPM`'s.
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
#: diffusers' ``prediction_type`` -> denoisekit's prediction.
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
#: Width of our U-Net's time features (``UNet``'s ``TimestepEmbedding(freq_dim=128)``).
TIME_FEATURES = 128


# ----------------------------------------------------------------------------------------------- import


def _first(paths: list[Path], what: str) -> Path:
    found = next((p for p in paths if p.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"{what} not found (looked for {', '.join(map(str, paths))})")
    return found


def read_folder(folder: str | os.PathLike[str]) -> tuple[Path, dict[str, Any], Path, dict[str, Any]]:
    """``(unet config path, unet config, weights path, scheduler config)`` of a diffusers folder; one line naming
    the file or key for anything missing or unsupported."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"diffusers folder {str(root)!r} does not exist")
    cfg_path = _first([root / "unet" / CONFIG_FILE, root / CONFIG_FILE], "the U-Net's config.json")
    cfg = load_json(cfg_path)
    if not isinstance(cfg, dict):
        raise ValueError(f"{cfg_path}: not a JSON object")
    cls = cfg.get("_class_name")
    if cls not in DIFFUSERS_CLASSES:
        raise ValueError(f"{cfg_path}: _class_name {cls!r} is not supported; allowed: {', '.join(DIFFUSERS_CLASSES)}")
    _check_blocks(cfg_path, cfg)
    weights = cfg_path.parent / WEIGHTS_FILE
    if not weights.is_file():
        pickled = cfg_path.parent / "diffusion_pytorch_model.bin"
        why = f" ({pickled.name} is there: convert it to safetensors; nothing is unpickled)" if pickled.is_file() else ""
        raise FileNotFoundError(f"{weights}: missing{why}")
    sched_path = _first([root / "scheduler" / SCHEDULER_FILE, root / SCHEDULER_FILE,
                         cfg_path.parent.parent / "scheduler" / SCHEDULER_FILE], "scheduler_config.json")
    sched = load_json(sched_path)
    if not isinstance(sched, dict):
        raise ValueError(f"{sched_path}: not a JSON object")
    return cfg_path, cfg, weights, {**sched, "_path": str(sched_path)}


def _check_blocks(path: Path, cfg: Mapping[str, Any]) -> None:
    """Every block type names a diffusers block, and the time embedding is one a DDPM timestep drives."""
    from diffusers.models.unets import unet_2d_blocks

    for key in ("down_block_types", "up_block_types"):
        for i, name in enumerate(cfg.get(key) or ()):
            if not (isinstance(name, str) and isinstance(getattr(unet_2d_blocks, name, None), type)):
                raise ValueError(f"{path}: {key}[{i}] {name!r} is not a block type diffusers knows")
    mid = cfg.get("mid_block_type")
    if mid is not None and not isinstance(getattr(unet_2d_blocks, str(mid), None), type):
        raise ValueError(f"{path}: mid_block_type {mid!r} is not a block type diffusers knows")
    kind = cfg.get("time_embedding_type", "positional")
    if kind not in ("positional", "learned"):
        raise ValueError(f"{path}: time_embedding_type {kind!r} is not supported (its network takes a noise level, "
                         f"not a DDPM timestep); allowed: positional, learned")


def process_from_scheduler(sched: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """``(ddpm process options, prediction)`` of a diffusers DDPM-family ``scheduler_config.json``."""
    where = sched.get("_path", "scheduler_config.json")
    if sched.get("trained_betas") is not None:
        raise ValueError(f"{where}: trained_betas (an explicit beta list) is not supported; use a beta_schedule "
                         f"({', '.join(BETA_SCHEDULES)})")
    schedule = sched.get("beta_schedule", "linear")
    if schedule not in BETA_SCHEDULES:
        raise ValueError(f"{where}: beta_schedule {schedule!r} is not supported; allowed: {', '.join(BETA_SCHEDULES)}")
    pred = sched.get("prediction_type", "epsilon")
    if pred not in PREDICTION_TYPES:
        raise ValueError(f"{where}: prediction_type {pred!r} is not supported; allowed: {', '.join(PREDICTION_TYPES)}")
    options = {"num_steps": int(sched.get("num_train_timesteps", 1000)),
               "beta_start": float(sched.get("beta_start", 1e-4)), "beta_end": float(sched.get("beta_end", 0.02)),
               "beta_schedule": BETA_SCHEDULES[schedule],
               "rescale_zero_snr": bool(sched.get("rescale_betas_zero_snr", False))}
    return options, PREDICTION_TYPES[pred]


def _image_shape(path: Path, cfg: Mapping[str, Any], size: int | None) -> tuple[int, int, int]:
    s = size if size is not None else cfg.get("sample_size")
    if isinstance(s, (list, tuple)) and len(s) == 2:
        h, w = int(s[0]), int(s[1])
    elif isinstance(s, int):
        h = w = s
    else:
        raise ValueError(f"{path}: sample_size {s!r} is not an image size; give the size (--size)")
    return int(cfg.get("in_channels", 4)), h, w


@contextmanager
def _atomic_dir(out: Path) -> Iterator[Path]:
    """A temporary sibling of ``out`` that becomes ``out`` when the block succeeds (and vanishes when it fails)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists (choose another --out)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if out.is_dir():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def import_diffusers(folder: str | os.PathLike[str], out: str | os.PathLike[str], *,
                     size: int | None = None) -> Path:
    """Make the run directory ``out`` of a diffusers model folder (module docstring); returns ``out``.

    ``size``: the image size when the config's ``sample_size`` does not give it. A class-conditional
    ``UNet2DModel`` (``num_class_embeds``) is read with its last class the null label (what an exported run has);
    a ``UNet2DConditionModel`` becomes an ``embedding`` run (cross-attention to ``cond["embedding"]``)."""
    cfg_path, cfg, weights, sched = read_folder(folder)
    options, prediction = process_from_scheduler(sched)
    image_shape = _image_shape(cfg_path, cfg, size)
    cls = cfg["_class_name"]
    embeds = cfg.get("num_class_embeds") if cfg.get("class_embed_type") is None else None
    num_classes = embeds - 1 if isinstance(embeds, int) and embeds > 1 else None
    context_dim = cfg.get("cross_attention_dim", 1280) if cls == "UNet2DConditionModel" else None
    net_cfg = DiffusersUNetConfig(cls=cls, config=json.dumps(cfg, sort_keys=True), num_classes=num_classes,
                                  context_dim=context_dim)
    net = DiffusersUNet(net_cfg)
    tensors = {f"unet.{k}": v.float() if v.is_floating_point() else v for k, v in load_tensors(weights).items()}
    expected = net.state_dict()
    missing, unknown = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unknown:
        raise ValueError(f"{weights}: weights do not match {cfg_path.name} (missing: "
                         f"{', '.join(k[5:] for k in missing[:6]) or '-'}; unexpected: {', '.join(k[5:] for k in unknown[:6]) or '-'})")
    for k, v in expected.items():
        if tensors[k].shape != v.shape:
            raise ValueError(f"{weights}: tensor {k[5:]!r} has shape {tuple(tensors[k].shape)}, {cfg_path.name} needs "
                             f"{tuple(v.shape)}")
    kind = "embedding" if context_dim is not None else ("class" if num_classes is not None else "none")
    config = Config(model=ModelConfig(name="diffusers_unet", options={
                        "cls": cls, "config": net_cfg.config, "num_classes": num_classes, "context_dim": context_dim}),
                    process=ProcessConfig(name="ddpm", prediction=prediction, time_input="model", options=options),
                    condition=ConditionConfig(kind=kind, dropout=0.0),
                    train=TrainConfig(steps=1, save_every=0), sample=SampleConfig(n=16))
    source = {"folder": str(Path(folder)), "resolved": str(Path(folder).resolve()), "class": cls,
              "weights": weights.name, "sha256": file_sha256(weights), "scheduler": sched.get("_class_name")}
    target = Path(out)
    with _atomic_dir(target) as tmp:
        save_config(config, tmp / RUN_CONFIG)
        state = {"recipe": "import", "image_shape": list(image_shape), "elapsed_s": 0.0, "depends": [],
                 "imported": source,
                 "classes": [str(i) for i in range(num_classes)] if num_classes else []}
        save_checkpoint(tmp / CHECKPOINTS, 0, model=tensors, ema=tensors, optimizer={"state": {}, "param_groups": []},
                        state=state, keep_last=0)
        write_model_card(tmp, path=target)
    return target


# ----------------------------------------------------------------------------------------------- export


def _unmappable(option: str, why: str) -> ValueError:
    return ValueError(f"cannot export to diffusers' UNet2DModel: {option} {why}")


def unet2d_config(net: UNet, image_shape: tuple[int, ...], num_steps: int) -> dict[str, Any]:
    """The ``UNet2DModel`` config with the layout of our ``net``, or ValueError naming the option that does not map."""
    c = net.config
    if c.concat_channels:
        raise _unmappable(f"model.concat_channels={c.concat_channels}", "(image conditioning) has no UNet2DModel input")
    if c.context_dim is not None:
        raise _unmappable(f"model.context_dim={c.context_dim}", "(cross-attention) has no UNet2DModel block (our "
                          "attention block is not diffusers' Transformer2DModel)")
    if len(set(c.blocks_per_level)) != 1:
        raise _unmappable(f"model.num_res_blocks={c.num_res_blocks}", "differs per level; UNet2DModel has one "
                          "layers_per_block")
    widths = [c.channels * m for m in c.channel_mult]
    if widths[0] < TIME_FEATURES:
        raise _unmappable(f"model.channels * channel_mult[0] = {widths[0]}", f"is below {TIME_FEATURES}: UNet2DModel feeds "
                          f"its time MLP block_out_channels[0] features, ours {TIME_FEATURES}")
    seen = {m.num_groups for m in net.modules() if isinstance(m, torch.nn.GroupNorm)}
    seen |= {m.groups for m in net.modules() if isinstance(m, ResBlock)}
    if len(seen) != 1:
        raise _unmappable(f"model.norm_groups={c.norm_groups}", f"gives GroupNorms of {sorted(seen)} groups (gcd with "
                          f"each width); UNet2DModel has one norm_num_groups")
    groups = seen.pop()
    levels = range(len(widths))
    return {"_class_name": "UNet2DModel", "sample_size": list(image_shape[1:]), "in_channels": c.in_channels,
            "out_channels": c.out_channels or c.in_channels, "center_input_sample": False,
            "time_embedding_type": "learned", "num_train_timesteps": num_steps, "time_embedding_dim": 4 * c.channels,
            "flip_sin_to_cos": True, "freq_shift": 0,
            "down_block_types": ["AttnDownBlock2D" if i in c.attention_levels else "DownBlock2D" for i in levels],
            "up_block_types": ["AttnUpBlock2D" if i in c.attention_levels else "UpBlock2D" for i in reversed(levels)],
            "mid_block_type": "UNetMidBlock2D", "block_out_channels": widths, "layers_per_block": c.blocks_per_level[0],
            "mid_block_scale_factor": 1, "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv",
            "dropout": c.dropout, "act_fn": "silu", "attention_head_dim": c.head_channels, "norm_num_groups": groups,
            "attn_norm_num_groups": groups, "norm_eps": 1e-5, "resnet_time_scale_shift": "scale_shift",
            "add_attention": c.mid_attention, "class_embed_type": None,
            "num_class_embeds": c.num_classes + 1 if c.num_classes else None}


def _linear(out: dict[str, Tensor], name: str, weight: Tensor, bias: Tensor) -> None:
    out[f"{name}.weight"], out[f"{name}.bias"] = weight, bias


def _res(out: dict[str, Tensor], name: str, r: ResBlock) -> None:
    _linear(out, f"{name}.norm1", r.norm1.weight, r.norm1.bias)
    _linear(out, f"{name}.conv1", r.conv1.weight, r.conv1.bias)
    _linear(out, f"{name}.time_emb_proj", r.emb.weight, r.emb.bias)
    width = r.conv1.out_channels  # our second norm has no affine: diffusers' is the identity
    _linear(out, f"{name}.norm2", torch.ones(width), torch.zeros(width))
    _linear(out, f"{name}.conv2", r.conv2.weight, r.conv2.bias)
    if isinstance(r.skip, torch.nn.Conv2d):
        _linear(out, f"{name}.conv_shortcut", r.skip.weight, r.skip.bias)


def _attn(out: dict[str, Tensor], name: str, a: AttentionBlock) -> None:
    _linear(out, f"{name}.group_norm", a.norm.weight, a.norm.bias)
    for part, w, b in zip(("to_q", "to_k", "to_v"), a.attn.qkv.weight.chunk(3), a.attn.qkv.bias.chunk(3)):
        _linear(out, f"{name}.{part}", w, b)
    _linear(out, f"{name}.to_out.0", a.attn.proj.weight, a.attn.proj.bias)


def _blocks(out: dict[str, Tensor], prefix: str, layers: list[Any], sampler: str) -> None:
    """One level's blocks (``resnets.j`` / ``attentions.j``) and its resampling conv."""
    j = 0
    for layer in layers:
        if isinstance(layer, Block):
            _res(out, f"{prefix}.resnets.{j}", layer.res)
            if layer.attn is not None:
                _attn(out, f"{prefix}.attentions.{j}", layer.attn)
            j += 1
        else:
            conv = layer.conv if isinstance(layer, Upsample) else layer
            _linear(out, f"{prefix}.{sampler}.0.conv", conv.weight, conv.bias)


def unet2d_state_dict(net: UNet, time: Tensor) -> dict[str, Tensor]:
    """Our U-Net's weights under ``UNet2DModel`` names (layout of :func:`unet2d_config`); ``time`` ``(N,)`` is the
    network time at each training step (the learned embedding's rows are our Fourier features there)."""
    c, out = net.config, {}
    te = net.time_embed
    width = c.channels * c.channel_mult[0]
    feats = fourier_features(time, te.freq_dim, te.time_scale)
    out["time_proj.weight"] = torch.nn.functional.pad(feats, (0, width - te.freq_dim)).float()
    w1 = te.mlp[0].weight
    _linear(out, "time_embedding.linear_1", torch.nn.functional.pad(w1, (0, width - te.freq_dim)), te.mlp[0].bias)
    _linear(out, "time_embedding.linear_2", te.mlp[2].weight, te.mlp[2].bias)
    if net.label_embed is not None:
        out["class_embedding.weight"] = net.label_embed.weight
    _linear(out, "conv_in", net.conv_in.weight, net.conv_in.bias)
    n, levels = c.blocks_per_level[0], len(c.channel_mult)
    down = list(net.down)
    for level in range(levels):
        size = n + (level != levels - 1)
        _blocks(out, f"down_blocks.{level}", down[:size], "downsamplers")
        down = down[size:]
    _res(out, "mid_block.resnets.0", net.mid[0].res)
    if net.mid[0].attn is not None:
        _attn(out, "mid_block.attentions.0", net.mid[0].attn)
    _res(out, "mid_block.resnets.1", net.mid[1].res)
    up = list(net.up)
    for k in range(levels):
        size = n + 1 + (k != levels - 1)
        _blocks(out, f"up_blocks.{k}", up[:size], "upsamplers")
        up = up[size:]
    _linear(out, "conv_norm_out", net.norm_out.weight, net.norm_out.bias)
    _linear(out, "conv_out", net.conv_out.weight, net.conv_out.bias)
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in out.items()}


def to_unet2d(denoiser: Any, image_shape: tuple[int, ...]) -> tuple[Any, dict[str, Any]]:
    """``(UNet2DModel, scheduler config)`` with the function of ``denoiser`` (a :class:`~denoisekit.Denoiser`
    over our U-Net or an imported diffusers one, on a DDPM process) on images of ``image_shape`` ``(C, H, W)``."""
    from diffusers import UNet2DModel

    process, net, prediction = denoiser.process, denoiser.net, denoiser.prediction
    if not isinstance(process, DiscreteDDPM):
        raise _unmappable(f"process {getattr(process, 'name', type(process).__name__)!r}", "is not DDPM's discrete "
                          "chain (diffusers' DDPM-family schedulers need one)")
    allowed = {v: k for k, v in PREDICTION_TYPES.items()}
    if prediction not in allowed:
        raise _unmappable(f"process.prediction={prediction!r}", f"has no diffusers prediction_type (allowed: "
                          f"{', '.join(allowed)})")
    sched: dict[str, Any] = {"_class_name": "DDPMScheduler", "prediction_type": allowed[prediction], "clip_sample": False}
    if process.rescale_zero_snr:
        sched.update(ddpm_config(DiscreteDDPM(process.num_steps, process.beta_start, process.beta_end,
                                              process.beta_schedule)), rescale_betas_zero_snr=True)
    else:
        sched.update(ddpm_config(process))
    if isinstance(net, DiffusersUNet):  # an imported model goes back as it came
        if net.config.cls != "UNet2DModel":
            raise _unmappable(f"model.cls={net.config.cls!r}", "is not UNet2DModel")
        if net.config.options.get("time_embedding_type") != "learned" and denoiser.clock.time_input != "model":
            raise _unmappable(f"process.time_input={denoiser.clock.time_input!r}", "is not the step index diffusers feeds")
        unet = UNet2DModel(**net.config.options)
        unet.load_state_dict({k[5:]: v for k, v in net.state_dict().items()})
        return unet.eval(), sched
    if not isinstance(net, UNet):
        raise _unmappable(f"model {type(net).__name__}", "is not our U-Net (unet) or an imported diffusers_unet")
    cfg = unet2d_config(net, image_shape, process.num_steps)
    steps = torch.arange(process.num_steps, dtype=torch.float64) / (process.num_steps - 1)
    unet = UNet2DModel(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    state = unet2d_state_dict(net, denoiser.clock.time(steps))
    theirs = unet.state_dict()
    missing, extra = sorted(set(theirs) - set(state)), sorted(set(state) - set(theirs))
    assert not missing and not extra, f"mapping incomplete: missing {missing[:5]}, extra {extra[:5]}"
    unet.load_state_dict(state)
    return unet.eval(), sched


def export_diffusers(run: str | os.PathLike[str], out: str | os.PathLike[str], *, weights: str = "ema") -> Path:
    """Write run ``run`` as a diffusers folder ``out`` (``unet/``, ``scheduler/``, ``model_index.json`` of a
    ``DDPMPipeline``, ``README.md``): ``UNet2DModel.from_pretrained(out / "unet")`` and
    ``DDPMScheduler.from_pretrained(out / "scheduler")`` load it. Nothing is written when it does not map."""
    import diffusers

    denoiser, _ = load_run(run, weights=weights)  # type: ignore[arg-type]
    unet, sched = to_unet2d(denoiser, run_info(run)["image_shape"])
    target = Path(out)
    with _atomic_dir(target) as tmp:
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        scheduler = diffusers.DDPMScheduler.from_config({k: v for k, v in sched.items() if not k.startswith("_")})
        scheduler.save_pretrained(tmp / "scheduler")
        write_json_atomic(tmp / "model_index.json", {"_class_name": "DDPMPipeline",
                                                     "_diffusers_version": diffusers.__version__,
                                                     "unet": ["diffusers", "UNet2DModel"],
                                                     "scheduler": ["diffusers", "DDPMScheduler"]})
        (tmp / "README.md").write_text(_export_card(Path(run), target, unet, sched))
    return target


def _export_card(run: Path, out: Path, unet: Any, sched: Mapping[str, Any]) -> str:
    params = sum(p.numel() for p in unet.parameters())
    return (f"---\nlibrary_name: diffusers\ntags:\n- denoisekit\n- unconditional-image-generation\n---\n\n"
            f"# {run.name} (diffusers format)\n\nExported by `denoisekit export-diffusers {run}`: a `UNet2DModel` "
            f"({params:,} parameters, learned time embedding over {sched['num_train_timesteps']} steps) and a "
            f"`DDPMScheduler` (prediction_type `{sched['prediction_type']}`).\n\n```python\nfrom diffusers import "
            f"DDPMPipeline\npipe = DDPMPipeline.from_pretrained(\"{out}\")\n```\n")

