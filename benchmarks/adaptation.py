"""Adapting a trained text-to-image model (issue 13): LoRA against full fine-tuning, ControlNet and T2I-Adapter
against a concat model trained from scratch, DreamBooth with and without prior preservation, textual inversion.

The base: a 16x16 shapes text-to-image model (``configs/shapes-text.yaml`` at batch 32, one or two solid shapes,
MiniLM cross-attention), trained here for ``--base-seconds`` of CPU into ``--work``/base and reused after.
Every image is drawn with DPM-Solver++(2M) on the Karras grid at ``--nfe`` NFE and CFG 3, image ``i`` of a set
from seed ``i`` for every model; every table has the base measured in the same run. Scores:

1. **LoRA vs full fine-tuning** on a style the base never saw (``data.style: striped``), each arm trained for
   the same CPU time (steps from a timed probe of its own step): *style hit-rate* = the fraction of images for
   captions of held-out striped renders that a striped-vs-solid classifier (trained here on renders) calls
   striped; on captions of held-out solid renders (the base's prompts: forgetting) *FID* against those renders
   in the shapes attribute network's feature space, *leak* = the fraction called striped, and *alignment* =
   the attribute network's all-attributes match with the prompt (:func:`denoisekit.eval.alignment.text_alignment`);
   trainable parameters, the file the run stores, CPU seconds per step.
2. **Control** by the foreground mask (``controlnet.signal: mask``): ControlNet (Zhang et al. 2023) and
   T2I-Adapter (Mou et al. 2023) on the frozen base, each for ``--control-seconds``; a Palette-style model
   (the mask as an extra input channel, ``model.concat_channels: 1``) trained from scratch for the base's
   CPU time plus that (equal total CPU); the base itself, not controlled. Prompts and masks from held-out
   renders; *IoU* = mask IoU between the control and the foreground of the output
   (:func:`denoisekit.data.control.control_fidelity`), FID and alignment as above; IoU at five points of
   each training run ("sudden convergence").
3. **Subject**: the shapes subject (an orange star with a blue disc, ``data.subject``) from 4 instance images.
   DreamBooth (Ruiz et al. 2023, full fine-tuning, their captions: "a large sks star on the left"), with and
   without prior preservation (64 class images of "a large orange star" from the base), and textual inversion
   (Gal et al. 2023: one new token ``<sks>`` from the initializer "orange"), for the same number of steps.
   *Subject rate* = the fraction a subject-vs-other classifier (trained on renders) calls the subject;
   *DINO* = mean cosine similarity of self-supervised features (SimCLR, :mod:`denoisekit.eval.selfsup`, trained
   on renders with and without the subject, centred on their mean; Ruiz et al. use DINO ViT-S/16) between
   generated and instance images; *prompt fidelity* = the attribute network finds every attribute of the prompt
   but the subject's colour (:meth:`Judges.subject_fidelity`), for "a small sks star on the left" and for "a
   large sks star left of a small red circle"-style pairs; *PRES* = that DINO similarity for images of the class
   prompts ("a large orange star ...": high = the class collapsed onto the subject) and the subject rate there;
   *DIV* = mean pairwise 1 - cosine of those features between images of one subject prompt (Ruiz et al.: LPIPS).

    python benchmarks/adaptation.py                    # ~35 CPU-minutes on one thread; rewrites its RESULTS.md section
    python benchmarks/adaptation.py --quick --no-write # a smoke run (tiny budgets, a throwaway work folder)
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from _common import cpu_seconds_per_call, with_steps, write_section  # benchmarks/ is the script's folder

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Adaptation (issue 13)"
SIZE, MAX_SHAPES = 16, 2
EVAL_SEED, REF_SEED, FEATURE_SEED = 88_001, 88_002, 88_003  # held-out renders; the runs train on seed 0
CLASS_PROMPT, WORD, TOKEN, INITIALIZER = "a large orange star", "sks", "<sks>", "orange"
STYLE = "striped"


@dataclass(frozen=True)
class Budget:
    """How much of everything: CPU seconds of training, images per evaluation set, sampler steps."""

    base_s: float = 480.0
    lora_s: float = 60.0
    control_s: float = 100.0
    db_steps: int = 300
    n: int = 256
    n_curve: int = 64
    n_subject: int = 96
    curve_points: int = 5  # checkpoints of the concat run (the adapters save DENSE and are read at CURVE_FRACTIONS)
    nfe: int = 16
    num_class: int = 64
    batch: int = 32
    length: int = 4000
    min_steps: int = 20
    quick: bool = False


#: Where the ControlNet / T2I-Adapter curves are read (fractions of the run, nearest checkpoint), from DENSE
#: evenly spaced checkpoints: the early points find a "sudden convergence".
CURVE_FRACTIONS, DENSE = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0), 32
QUICK = Budget(base_s=3.0, lora_s=0.5, control_s=0.5, db_steps=3, n=24, n_curve=8, n_subject=16, curve_points=2,
               nfe=4, num_class=4, batch=8, length=200, min_steps=3, quick=True)


# --- training for a CPU budget ----------------------------------------------------------------------------------

def config(*overrides: str, budget: Budget) -> Any:
    """The base's config (``configs/shapes-text.yaml`` at 16x16, batch ``budget.batch``) with ``overrides``."""
    from denoisekit.train.config import load_config

    return load_config(ROOT / "configs" / "shapes-text.yaml", [
        f"data.size={SIZE}", f"data.max_shapes={MAX_SHAPES}", "data.holdout=[]", f"data.length={budget.length}",
        f"train.batch_size={budget.batch}",
        "train.save_every=0", "train.keep_last=1", "sample.n=0", "optim.warmup_steps=100", *overrides])


def concat_recipe() -> type:
    """The diffusion recipe with the control image as extra input channels (``cond["concat"]``): a Palette-style
    conditional model trained from scratch, its control computed from each batch as the controlnet recipe's."""
    from denoisekit.condition import merge_conditions
    from denoisekit.data.control import SIGNAL_FIELDS, control_signal
    from denoisekit.train.recipes import DiffusionRecipe

    class ConcatControlRecipe(DiffusionRecipe):
        def collate(self, items):  # the signal's dataset fields (label maps) into the batch, as the controlnet recipe
            out = super().collate(items)
            for name in SIGNAL_FIELDS[self.config.controlnet.signal]:
                out[name] = torch.stack([it[name] for it in items])
            return out

        def cond(self, batch, gens, x0):
            cond = self.condition.training(batch, gens, x0.device)
            return merge_conditions(cond, {"concat": control_signal(self.config.controlnet.signal, batch, x0)})

        def step(self, batch, gens, engine):
            x0 = batch["image"].to(engine.device, torch.float32)
            return {"loss": self.config.loss(self.denoiser, x0, self.cond(batch, gens, x0), gens).mean()}

        def check_model(self, engine):  # the diffusion recipe's one forward pass, with the control channel
            from denoisekit.train.build import build_denoiser

            batch = self.collate([self.dataset[0]])
            x0 = batch["image"].to(engine.device, torch.float32)
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                cond = self.cond(batch, [torch.Generator().manual_seed(0)], x0)
                build_denoiser(self.config, engine.ema_module("net"))(x0, torch.ones(1, dtype=torch.float64), cond)

    return ConcatControlRecipe


def warm_captions(cfg: Any) -> float:
    """Encode every caption of ``cfg``'s dataset once into the process-wide MiniLM cache (what the preset's
    ``condition.cache_size`` is for), so that timed probes and training runs pay for the network alone;
    returns the CPU seconds it took."""
    from denoisekit.models.text import get_text_encoder
    from denoisekit.train.build import build_dataset

    t0 = time.process_time()
    ds, options = build_dataset(cfg), cfg.condition_options()
    captions = [ds.render(i).caption for i in range(len(ds))]
    encoder = get_text_encoder(options.encoder, **options.encoder_options())
    for i in range(0, len(captions), 256):
        encoder.encode(captions[i:i + 256])
    return time.process_time() - t0


def _engine(cfg: Any, out: Path, recipe: type | None) -> Any:
    from denoisekit.engine import Engine
    from denoisekit.train.trainer import Trainer

    return Trainer(cfg, out, progress=False) if recipe is None else Engine(recipe(cfg), out, progress=False)


def train(cfg: Any, out: Path, *, seconds: float | None = None, steps: int | None = None, points: int = 1,
          recipe: type | None = None, minimum: int = 20) -> dict[str, Any]:
    """Train ``cfg`` into ``out`` for ``steps``, or for the steps of a timed probe that fit in ``seconds`` of CPU,
    with ``points`` evenly spaced checkpoints, unless a finished run is there (then its ``budget.json``).
    Returns ``steps``, ``seconds_per_step`` (measured over the run) and ``train_cpu_s``."""
    from denoisekit.engine.checkpoint import latest_checkpoint
    from denoisekit.train.config import config_from_dict, config_to_dict

    meta = out / "budget.json"
    if meta.is_file() and latest_checkpoint(out / "checkpoints") is not None:
        return json.loads(meta.read_text())
    captions_s = warm_captions(cfg)
    if steps is None:
        d = config_to_dict(cfg)
        d["train"].update(steps=10**6, save_every=0)
        with tempfile.TemporaryDirectory() as probe:
            engine = _engine(config_from_dict(d), Path(probe) / "p", recipe)
            steps = max(minimum, int(seconds / cpu_seconds_per_call(engine.train_step, n=6)))
            engine.close()
    d = config_to_dict(with_steps(cfg, steps))
    if points > 1:
        d["train"].update(save_every=math.ceil(steps / points), keep_last=points + 1)
    print(f"training {out.name}: {steps} steps", flush=True)
    t0 = time.process_time()
    engine = _engine(config_from_dict(d), out, recipe)
    engine.fit()
    info = {"steps": steps, "train_cpu_s": (time.process_time() - t0) / torch.get_num_threads(), "budget_s": seconds,
            "captions_cpu_s": captions_s}
    info["seconds_per_step"] = info["train_cpu_s"] / steps
    meta.write_text(json.dumps(info, indent=1) + "\n")
    return info


# --- evaluation -----------------------------------------------------------------------------------------------

def renders(n: int, seed: int, **options: Any) -> tuple[torch.Tensor, list[str], list[Any]]:
    """``n`` shapes renders ``(n, 3, S, S)`` in [-1, 1], their captions and items (masks included)."""
    from denoisekit.data.shapes import ShapesDataset

    ds = ShapesDataset(**{"size": SIZE, "max_shapes": MAX_SHAPES, "return_masks": True, **options}, length=n,
                       seed=seed, label_from="none")
    items = [ds[i] for i in range(n)]
    return torch.stack([it["image"] for it in items]), [it["caption"] for it in items], items


def draw(model: Any, prompts: list[str], budget: Budget, **cond: Any) -> torch.Tensor:
    """One image per prompt (image ``i`` from seed ``i``), CFG 3, DPM-Solver++(2M) Karras at ``budget.nfe``."""
    from denoisekit.generation import Guidance, generate

    with torch.no_grad():
        return generate(model, len(prompts), {"text": list(prompts), **cond}, sampler="dpmpp_2m", schedule="karras",
                        nfe=budget.nfe, guidance=Guidance(cfg_scale=3.0), seed=0, batch_size=128).clamp(-1, 1)


class Judges:
    """The networks that score images (trained on renders on first use, cached under ``cache``)."""

    def __init__(self, budget: Budget, cache: Path) -> None:
        from denoisekit.eval.alignment import shapes_attribute_network
        from denoisekit.eval.features import ClassifierConfig

        self.budget, self.cache = budget, cache
        small = ClassifierConfig(image_size=16, epochs=1, test_fraction=0.1) if budget.quick else None
        self.attributes = shapes_attribute_network(SIZE, config=small, n_train=400 if budget.quick else None,
                                                   cache_dir=cache if budget.quick else None)
        self.clf = ClassifierConfig(image_size=16, epochs=1 if budget.quick else 6, test_fraction=0.1)
        self.n_train = 200 if budget.quick else 3000
        self._style = self._subject = self._selfsup = self._centre = None

    def _binary(self, name: str, positive: torch.Tensor, negative: torch.Tensor) -> Any:
        from denoisekit.eval.features import cached_classifier

        x = torch.cat([positive, negative])
        y = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))]).long()
        net = cached_classifier(name, x, y, 2, self.clf, cache_dir=self.cache)
        print(f"{name} classifier: held-out accuracy {net.info.get('test_accuracy', float('nan')):.3f}", flush=True)
        return net

    @property
    def style(self) -> Any:
        """Striped vs solid renders."""
        if self._style is None:
            n = self.n_train
            self._style = self._binary("adabench-style16", renders(n, FEATURE_SEED, style=STYLE)[0],
                                       renders(n, FEATURE_SEED + 1)[0])
        return self._style

    @property
    def subject(self) -> Any:
        """Renders whose first shape is the subject vs renders without it, half of each a lone orange star."""
        if self._subject is None:
            n = self.n_train // 2
            star = {"kinds": ("star",), "colours": ("orange",), "max_shapes": 1}
            pos = torch.cat([renders(n, FEATURE_SEED + 2, subject=1.0)[0],
                             renders(n, FEATURE_SEED + 3, subject=1.0, **star)[0]])
            neg = torch.cat([renders(n, FEATURE_SEED + 4)[0], renders(n, FEATURE_SEED + 5, **star)[0]])
            self._subject = self._binary("adabench-subject16", pos, neg)
        return self._subject

    @property
    def selfsup(self) -> Any:
        """SimCLR features of renders with and without the subject (the DINO of Ruiz et al.'s metrics), and
        their mean over those renders (``self._centre``)."""
        from denoisekit.eval.selfsup import SelfSupConfig, selfsup_feature_network

        if self._selfsup is None:
            x = renders(self.n_train // 2 if self.budget.quick else 2000, FEATURE_SEED + 6, subject=0.5)[0]
            cfg = SelfSupConfig(image_size=16, steps=5 if self.budget.quick else 300)
            self._selfsup = selfsup_feature_network(x, "adabench shapes16", cfg, cache_dir=self.cache)
            with torch.no_grad():
                self._centre = self._selfsup.features(x).double().mean(0)
        return self._selfsup

    def rate(self, net: Any, x: torch.Tensor) -> float:
        """The fraction of ``x`` that a binary classifier calls positive."""
        return float((net.predict(x) == 1).double().mean())

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unit self-supervised features of ``x``, centred on the mean of the renders they were trained on (every
        raw feature vector shares a large common part: uncentred cosines of any two shapes images are ~0.97)."""
        with torch.no_grad():
            f = self.selfsup.features(x).double()
            return torch.nn.functional.normalize(f - self._centre, dim=1)

    def subject_fidelity(self, x: torch.Tensor, prompts: list[str], word: str) -> float:
        """The fraction of images showing every attribute of their prompt (count, layout, kind and size of each
        shape, the other shapes' colours) except the colour of the subject, the star named by ``word``: the
        attribute network knows no subject and reads the orange-and-blue one as orange in under half of real
        renders (the section prints the rate)."""
        from denoisekit.data.shapes import parse_caption
        from denoisekit.eval.alignment import HEAD_NAMES, caption_labels, predict_attributes

        pred = predict_attributes(self.attributes, x)
        ok = []
        for p, row in zip(prompts, pred.tolist()):
            c = parse_caption(p.replace(word, INITIALIZER))
            k = next(i for i, sh in enumerate(c.shapes) if f"a {sh.size} {word} {sh.kind}" in p)
            forward = c.count == 1 or c.relation in ("left of", "above")
            slots = ("first", "last") if c.count == 1 else ("first" if (k == 0) == forward else "last",)
            skip = {HEAD_NAMES.index(f"{slot}_colour") for slot in slots}
            ok.append(all(t < 0 or i in skip or t == row[i] for i, t in enumerate(caption_labels(c))))
        return sum(ok) / len(ok)

    def fid(self, x: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
        """FID of ``x`` against ``ref`` in the attribute network's features, and ``ref``'s real-vs-real floor."""
        from denoisekit.eval.report import evaluate

        m = evaluate(x, ref, features=self.attributes, kid_subset_size=min(1000, len(x)))
        return {"fid": m["fid"], "floor": m["floor"]["fid"]}

    def alignment(self, x: torch.Tensor, prompts: list[str]) -> dict[str, float]:
        """``alignment``: every attribute of the prompt matches (:func:`~denoisekit.eval.alignment.text_alignment`);
        ``objects``: the count and every shape's kind, colour and size match, wherever they are."""
        from denoisekit.eval.alignment import text_alignment

        m = text_alignment(x, prompts, self.attributes)
        objects = torch.stack([m["per_image"][a] for a in ("count", "kind", "colour", "size")]).all(0)
        return {"alignment": m["alignment"], "objects": float(objects.double().mean())}


def size_of(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def count_tensors(path: Path) -> int:
    from denoisekit.io import load_tensors

    return sum(t.numel() for t in load_tensors(path).values())


def latest(run: Path, name: str = "ema.safetensors") -> Path:
    from denoisekit.engine.checkpoint import latest_checkpoint

    return latest_checkpoint(run / "checkpoints") / name


# --- 1. LoRA vs full fine-tuning ----------------------------------------------------------------------------------

def lora_part(base: Path, work: Path, b: Budget, judges: Judges) -> list[dict[str, Any]]:
    from denoisekit.train.run import load_model

    style_x, style_prompts, _ = renders(b.n, EVAL_SEED, style=STYLE)
    base_x, base_prompts, _ = renders(b.n, EVAL_SEED)
    ref = renders(2 * b.n, REF_SEED)[0]
    lora = ["train.recipe=lora", "optim.lr=2e-3"]
    arms = [("full fine-tuning", "full", ["optim.lr=2e-4"])]
    arms += [(f"LoRA r={r}", f"lora{r}", [*lora, f"lora.rank={r}", "lora.convs=true"]) for r in (1, 4, 16)]
    arms += [("LoRA r=4, attention only", "lora4_attention", [*lora, "lora.rank=4"])]
    rows = [{"model": "real renders", "hit": judges.rate(judges.style, style_x), **judges.fid(base_x, ref),
             "leak": judges.rate(judges.style, base_x), **judges.alignment(base_x, base_prompts)}]
    runs = [("base", base, None)]
    for name, folder, overrides in arms:
        cfg = config(f"init.from_run={base}", f"data.style={STYLE}", "optim.warmup_steps=20", *overrides, budget=b)
        runs.append((name, work / folder, train(cfg, work / folder, seconds=b.lora_s, minimum=b.min_steps)))
    for name, run, info in runs:
        model = load_model(run)
        t0 = time.perf_counter()
        styled, plain = draw(model, style_prompts, b), draw(model, base_prompts, b)
        row = {"model": name, "hit": judges.rate(judges.style, styled), **judges.fid(plain, ref),
               "leak": judges.rate(judges.style, plain), **judges.alignment(plain, base_prompts),
               "sample_s": time.perf_counter() - t0}
        if info is not None:
            file = run / "lora.safetensors" if (run / "lora.safetensors").is_file() else latest(run)
            row.update(params=count_tensors(file), file_bytes=size_of(file), steps=info["steps"],
                       step_s=info["seconds_per_step"], train_cpu_s=info["train_cpu_s"])
        rows.append(row)
        print(f"lora  {name:18s} hit {row['hit']:.3f} FID {row['fid']:.3f} leak {row['leak']:.3f}", flush=True)
    return rows


# --- 2. ControlNet, T2I-Adapter, concat from scratch ---------------------------------------------------------------

def curve_checkpoints(run: Path, fractions: tuple[float, ...] | None) -> list[tuple[int, Path]]:
    """``(step, checkpoint)`` of a run: all of them, or those nearest ``fractions`` of its last step."""
    from denoisekit.engine.checkpoint import list_checkpoints

    ckpts = list_checkpoints(run / "checkpoints")
    if fractions is None:
        return ckpts
    last = ckpts[-1][0]
    picked = {min(ckpts, key=lambda c: abs(c[0] - f * last))[0] for f in fractions}
    return [c for c in ckpts if c[0] in picked]


def control_modules(run: Path, unet: Any, fractions: tuple[float, ...]) -> list[tuple[int, Any]]:
    """``(step, control module)`` of a controlnet run's checkpoints nearest ``fractions`` (EMA weights)."""
    from denoisekit.io import load_json, load_tensors
    from denoisekit.models.controlnet import ControlConfig, build_control

    out = []
    for _, ckpt in curve_checkpoints(run, fractions):
        state = load_json(ckpt / "state.json")
        tensors = load_tensors(ckpt / "ema.safetensors")
        prefix = next(k for k in tensors if ".controls.0." in k).split(".controls.0.")[0] + ".controls.0."
        module = build_control(unet, ControlConfig.from_dict(state["controlnet"]))
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items()})
        out.append((int(state["step"]), module.eval().requires_grad_(False)))
    return out


def control_part(base: Path, base_info: dict[str, Any], work: Path, b: Budget, judges: Judges
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from denoisekit.data.control import control_fidelity, control_signal
    from denoisekit.generation.control import with_controlnets
    from denoisekit.models.controlnet import controlled_denoiser, find_unet
    from denoisekit.train.run import load_model

    def masks_of(x: torch.Tensor, items: list[Any]) -> torch.Tensor:
        return control_signal("mask", {"image": x, "label_map": torch.stack([it["label_map"] for it in items])})

    real, prompts, items = renders(b.n, EVAL_SEED)
    control = masks_of(real, items)
    ref = renders(2 * b.n, REF_SEED)[0]
    base_model = load_model(base)
    scratch_s = (base_info.get("train_cpu_s") or b.base_s) + b.control_s
    arms = {"ControlNet": ("controlnet", b.control_s), "T2I-Adapter": ("t2i_adapter", b.control_s),
            "concat from scratch": ("concat", scratch_s)}
    rows = [{"model": "real renders", "iou": float(control_fidelity("mask", real, control).mean()),
             **judges.fid(real, ref), **judges.alignment(real, prompts)}]
    models: dict[str, tuple[Any, dict[str, Any] | None, Path | None]] = {"base (no control)": (base_model, None, None)}
    for name, (kind, seconds) in arms.items():
        run = work / kind
        common = ["data.return_masks=true", "controlnet.signal=mask", "optim.lr=1e-3"]
        if kind == "concat":
            info = train(config("model.concat_channels=1", *common, budget=b), run, seconds=seconds,
                         points=b.curve_points, recipe=concat_recipe(), minimum=b.min_steps)
            models[name] = (load_model(run), info, latest(run))
        else:
            cfg = config("train.recipe=controlnet", f"init.from_run={base}", f"controlnet.kind={kind}",
                         "optim.warmup_steps=20", *common, budget=b)
            info = train(cfg, run, seconds=seconds, points=DENSE, minimum=b.min_steps)
            models[name] = (with_controlnets(base_model, [(run, 1.0)]), info, run / "controlnet.safetensors")
    for name, (model, info, file) in models.items():
        extra = {} if name == "base (no control)" else {"control" if "concat" not in name else "concat": control}
        t0 = time.perf_counter()
        x = draw(model, prompts, b, **extra)
        row = {"model": name, "iou": float(control_fidelity("mask", x, control).mean()), **judges.fid(x, ref),
               **judges.alignment(x, prompts), "sample_s": time.perf_counter() - t0}
        if info is not None:
            row.update(params=count_tensors(file), file_bytes=size_of(file), steps=info["steps"],
                       step_s=info["seconds_per_step"], train_cpu_s=info["train_cpu_s"])
        rows.append(row)
        print(f"control {name:20s} IoU {row['iou']:.3f} FID {row['fid']:.3f}", flush=True)
    # IoU against training steps, on the first n_curve prompts
    curve, p, c = [], prompts[:b.n_curve], control[:b.n_curve]
    base_iou = float(control_fidelity("mask", draw(base_model, p, b), c).mean())
    unet = find_unet(base_model.denoiser.net)
    for name, (kind, _) in arms.items():
        run = work / kind
        if kind == "concat":
            points = [(step, load_model(run, checkpoint=ck)) for step, ck in curve_checkpoints(run, None)]
            extra = {"concat": c}
        else:
            points = [(step, replace(base_model, denoiser=controlled_denoiser(base_model.denoiser, [m], 1.0)))
                      for step, m in control_modules(run, unet, CURVE_FRACTIONS)]
            extra = {"control": c}
        info = models[name][1]
        curve.append({"model": name, "points": [(0, base_iou if kind != "concat" else float("nan"))] + [
            (step, float(control_fidelity("mask", draw(m, p, b, **extra), c).mean())) for step, m in points],
            "steps": info["steps"], "seconds_per_step": info["seconds_per_step"]})
        print(f"curve {name}: " + ", ".join(f"{s}: {fmt(v)}" for s, v in curve[-1]["points"]), flush=True)
    return rows, curve


# --- 3. DreamBooth and textual inversion ---------------------------------------------------------------------------

SIZES_REGIONS = [("large", "in the centre"), ("small", "on the left"), ("large", "at the top"),
                 ("small", "in the bottom right"), ("large", "on the right"), ("small", "in the top left"),
                 ("large", "at the bottom"), ("small", "in the centre")]
PARTNERS = [f"{rel} {other}" for rel in ("left of", "right of", "above", "below")
            for other in ("a small red circle", "a small green square")]


def subject_prompts(word: str, n: int) -> dict[str, list[str]]:
    """The evaluation prompts with ``word`` for the subject's colour: one star (8 prompts, cycled: DIV groups
    them), a star beside another shape (prompt fidelity), and the class prompts (``word`` = orange)."""
    def one(w: str) -> list[str]:
        return [f"a {s} {w} star {r}" for s, r in SIZES_REGIONS]

    single, klass = one(word), one(INITIALIZER)
    return {"single": [single[i % 8] for i in range(n)], "class": [klass[i % 8] for i in range(n)],
            "pair": [f"a large {word} star {PARTNERS[i % len(PARTNERS)]}" for i in range(n)]}


def subject_part(base: Path, work: Path, b: Budget, judges: Judges) -> tuple[list[dict[str, Any]], list[str]]:
    from denoisekit.eval.alignment import text_alignment
    from denoisekit.generation.adapters import with_embeddings
    from denoisekit.train.run import load_model

    instance_opts = {"subject": 1.0, "max_shapes": 1}
    instances, captions, _ = renders(4, 0, **instance_opts)  # = the runs' data (seed 0, items 0..3)
    inst = judges.embed(instances)
    common = [f"init.from_run={base}", "data.subject=1.0", "data.max_shapes=1", "data.length=4",
              "train.batch_size=4", "optim.warmup_steps=10"]
    db = ["train.recipe=dreambooth", f"dreambooth.class_prompt={CLASS_PROMPT}", f"dreambooth.num_class={b.num_class}",
          "optim.lr=2e-4", *common]
    arms = {"DreamBooth, no prior": ("db", db + ["dreambooth.prior_weight=0"]),
            "DreamBooth + prior": ("db_prior", db + ["dreambooth.prior_weight=1.0"]),
            "textual inversion": ("ti", ["train.recipe=textual_inversion", f"textual_inversion.tokens=[{TOKEN}]",
                                          f"textual_inversion.initializer={INITIALIZER}",
                                          f"textual_inversion.replace={WORD}", "optim.lr=5e-3", *common])}
    base_model = load_model(base)
    models = [("base, initializer word", INITIALIZER, base_model, None, None),
              ("base, rare word", WORD, base_model, None, None)]
    for name, (folder, overrides) in arms.items():
        run = work / folder
        info = train(config(*overrides, budget=b), run, steps=b.db_steps)
        if folder == "ti":
            models.append((name, TOKEN, with_embeddings(load_model(base), [run]), info, run / "embedding.safetensors"))
        else:
            models.append((name, WORD, load_model(run), info, latest(run)))

    def scores(x_single: torch.Tensor, single: list[str], word: str) -> dict[str, float]:
        f = judges.embed(x_single)
        groups = [f[[i for i, p in enumerate(single) if p == q]] for q in dict.fromkeys(single)]
        div = [float((1 - g @ g.T)[torch.triu_indices(len(g), len(g), 1).unbind()].mean()) for g in groups if len(g) > 1]
        return {"subject": judges.rate(judges.subject, x_single), "dino": float((f @ inst.T).mean()),
                "div": sum(div) / len(div) if div else float("nan"),
                "prompt_single": judges.subject_fidelity(x_single, single, word)}

    real_x, real_captions, _ = renders(b.n_subject, FEATURE_SEED + 7, **instance_opts)
    pair_x, pair_captions, _ = renders(b.n_subject, FEATURE_SEED + 8, subject=1.0, min_shapes=2)
    rows = [{"model": "real subject renders", "word": "", **scores(real_x, real_captions, WORD),
             "prompt_pair": judges.subject_fidelity(pair_x, pair_captions, WORD),
             "pair_subject": judges.rate(judges.subject, pair_x),  # all captions differ: no DIV
             "colour_read": text_alignment(real_x, [c.replace(WORD, INITIALIZER) for c in real_captions],
                                           judges.attributes)["colour"]}]
    for name, word, model, info, file in models:
        p = subject_prompts(word, b.n_subject)
        t0 = time.perf_counter()
        single, pair, klass = draw(model, p["single"], b), draw(model, p["pair"], b), draw(model, p["class"], b)
        fk = judges.embed(klass)
        row = {"model": name, "word": word, **scores(single, p["single"], word),
               "prompt_pair": judges.subject_fidelity(pair, p["pair"], word),
               "pair_subject": judges.rate(judges.subject, pair), "pres": float((fk @ inst.T).mean()),
               "class_subject": judges.rate(judges.subject, klass), "sample_s": time.perf_counter() - t0}
        if info is not None:
            row.update(params=count_tensors(file), file_bytes=size_of(file), steps=info["steps"],
                       train_cpu_s=info["train_cpu_s"])
        rows.append(row)
        print(f"subject {name:24s} subject {row['subject']:.3f} DINO {row['dino']:.3f} PRES {row['pres']:.3f}",
              flush=True)
    return rows, captions


# --- tables ---------------------------------------------------------------------------------------------------

def fmt(v: Any, spec: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def kib(v: Any) -> str:
    return "" if v is None else f"{v / 1024:.1f}"


def table(columns: list[tuple[str, str, str]], rows: list[dict[str, Any]]) -> list[str]:
    """A markdown table: ``columns`` are ``(header, key, format)``; a missing or NaN value is an empty cell."""
    def cell(r: dict[str, Any], key: str, spec: str) -> str:
        return kib(r.get(key)) if spec == "KiB" else fmt(r.get(key), spec)

    return ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "---|" * len(columns),
            *("| " + " | ".join(cell(r, k, f) for _, k, f in columns) + " |" for r in rows)]


COST = [("trainable params", "params", ","), ("file KiB", "file_bytes", "KiB"), ("steps", "steps", "d"),
        ("CPU s / step", "step_s", ".3f"), ("train CPU s", "train_cpu_s", ".0f")]


def tables(result: dict[str, Any]) -> dict[str, list[str]]:
    """The four tables of the section: LoRA, control, IoU against steps, subject."""
    lora = table([("model", "model", ""), ("style hit-rate", "hit", ".3f"), ("FID, base prompts", "fid", ".2f"),
                  ("floor", "floor", ".2f"), ("leak", "leak", ".3f"), ("alignment", "alignment", ".3f"),
                  ("objects", "objects", ".3f"), *COST], result["lora"])
    control = table([("model", "model", ""), ("mask IoU", "iou", ".3f"), ("FID", "fid", ".2f"), ("floor", "floor", ".2f"),
                     ("alignment", "alignment", ".3f"), ("objects", "objects", ".3f"), *COST], result["control"])
    curve = ["| model | mask IoU at training step (fraction of the run) |", "|---|---|"]
    for c in result["curve"]:
        pts = ", ".join(f"{s} ({s / c['steps']:.2f}): {fmt(v)}" for s, v in c["points"] if not math.isnan(v))
        curve.append(f"| {c['model']} | {pts} |")
    subject = table([("model", "model", ""), ("prompt word", "word", ""), ("subject rate", "subject", ".3f"),
                     ("DINO", "dino", ".3f"), ("DIV", "div", ".3f"), ("prompt fidelity", "prompt_single", ".3f"),
                     ("prompt fidelity, pairs", "prompt_pair", ".3f"), ("subject rate, pairs", "pair_subject", ".3f"),
                     ("PRES", "pres", ".3f"), ("subject rate, class prompts", "class_subject", ".3f"),
                     *[c for c in COST if c[1] != "step_s"]], result["subject"])
    return {"lora": lora, "control": control, "curve": curve, "subject": subject}


def by_model(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["model"]: r for r in rows}


def converged_at(points: list[tuple[int, float]]) -> int | None:
    """The first step whose IoU is more than halfway from the first point's to the best (None: no rise)."""
    finite = [(s, v) for s, v in points if not math.isnan(v)]
    if len(finite) < 2:
        return None
    lo, hi = finite[0][1], max(v for _, v in finite)
    return None if hi - lo < 0.05 else next(s for s, v in finite[1:] if v >= (lo + hi) / 2)


def lora_text(rows: list[dict[str, Any]]) -> list[str]:
    m = by_model(rows)
    full, base = m["full fine-tuning"], m["base"]
    loras = [r for r in rows if r["model"].startswith("LoRA")]
    best = max(loras, key=lambda r: r["hit"])
    arms = [full, *loras]

    def per_hit(r: dict[str, Any]) -> float:  # leak beyond the base's per unit of style learned
        return (r["leak"] - base["leak"]) / max(r["hit"] - base["hit"], 1e-6)

    convs = [r for r in loras if "attention only" not in r["model"]]
    less = sum(map(per_hit, convs)) / len(convs) < 0.8 * per_hit(full)
    verdict = ("LoRA leaks less style per unit learned than full fine-tuning here." if less else
               "The adapter's data show only striped captions, so nothing tells either method to keep solid shapes "
               "solid: LoRA does not forget measurably less per unit of style learned here.")
    att = m.get("LoRA r=4, attention only")
    if att is not None and att["hit"] == min(r["hit"] for r in arms) and att["leak"] == min(r["leak"] for r in arms):
        verdict += (" The attention-only adapter forgets least because it learns least (at 16 px the base's "
                    "attention runs at 8x8 and 4x4 only, too coarse for 1-pixel stripes).")
    return [
        f"At equal CPU time the best LoRA ({best['model']}) reaches a style hit-rate of {best['hit']:.2f} against "
        f"{full['hit']:.2f} for full fine-tuning, "
        + ("ahead of it" if best["hit"] > full["hit"] else "behind it")
        + f", storing {best['file_bytes'] / full['file_bytes']:.1%} of the bytes ({best['params']:,} of "
        f"{full['params']:,} weights) at {best['step_s'] / full['step_s']:.2f}x the CPU per step. Forgetting "
        f"against the style learned (leak / hit-rate): " + ", ".join(
            f"{r['model']} {r['leak']:.2f} / {r['hit']:.2f}" for r in arms)
        + f" (base {base['leak']:.2f}), and the FID on the base's prompts rises from {base['fid']:.2f} to "
        + ", ".join(f"{r['fid']:.1f}" for r in arms) + " in that order. " + verdict]


def control_text(rows: list[dict[str, Any]], curve: list[dict[str, Any]]) -> list[str]:
    m = by_model(rows)
    ranked = sorted((r for r in rows if r["model"] not in ("real renders",)), key=lambda r: -r["iou"])
    lines = ["Mask IoU, best first: " + ", ".join(f"{r['model']} {r['iou']:.3f}" for r in ranked)
             + f" (real renders {m['real renders']['iou']:.3f})."]
    for c in curve:
        at, first = converged_at(c["points"]), next((s, v) for s, v in c["points"] if not math.isnan(v))
        if first[0] > 0:  # no step-0 point: a model that starts with no control to keep
            lines.append(f"{c['model']}: already {first[1]:.3f} at its first checkpoint (step {first[0]}), "
                         f"{max(v for _, v in c['points'] if not math.isnan(v)):.3f} at best.")
            continue
        flat = [v for s, v in c["points"] if at is not None and 0 < s < at]
        lines.append(f"{c['model']}: " + ("no rise of the IoU over the run." if at is None else
                     f"the IoU is more than halfway to its best at step {at} of {c['steps']} "
                     f"({at / c['steps']:.0%} of the run)" + (f", after {len(flat)} checkpoint(s) at the base's "
                     f"{first[1]:.3f} (at most {max(flat):.3f})" if flat and max(flat) < first[1] + 0.05 else "")
                     + "."))
    return [" ".join(lines)]


def subject_text(rows: list[dict[str, Any]]) -> list[str]:
    m = by_model(rows)
    plain, prior, ti = m["DreamBooth, no prior"], m["DreamBooth + prior"], m["textual inversion"]
    init, base, real = m["base, initializer word"], m["base, rare word"], m["real subject renders"]
    lowered = prior["pres"] < plain["pres"]
    return [
        f"Prior preservation {'lowers' if lowered else 'does not lower'} PRES here: {plain['pres']:.3f} without, "
        f"{prior['pres']:.3f} with (the base: {init['pres']:.3f}); more plainly, the class prompts (\"a large "
        f"orange star ...\") show the subject in {plain['class_subject']:.0%} of the images without it and "
        f"{prior['class_subject']:.0%} with it (base {init['class_subject']:.0%})"
        + (": without the prior the class collapses onto the subject (Ruiz et al.'s language drift), with it the "
           "class stays itself." if plain["class_subject"] > prior["class_subject"] + 0.2 else ".") + " The subject "
        f"prompts give the subject in {plain['subject']:.0%} / {prior['subject']:.0%} of the images (without / "
        f"with prior; real renders {real['subject']:.0%}), DINO {plain['dino']:.3f} / {prior['dino']:.3f} "
        f"(real {real['dino']:.3f}, base {init['dino']:.3f}), DIV {plain['div']:.3f} / {prior['div']:.3f} (base "
        f"{init['div']:.3f}). In pairs the subject appears in {plain['pair_subject']:.0%} / "
        f"{prior['pair_subject']:.0%} of the images (real {real['pair_subject']:.0%}). Textual inversion finds a "
        f"row that moves the subject rate from its initializer's {init['subject']:.0%} to {ti['subject']:.0%} "
        f"(DINO {init['dino']:.3f} to {ti['dino']:.3f}) against DreamBooth's {plain['subject']:.0%}"
        + (": a frozen base that never drew the blue disc is not made to draw it by a new word alone"
           if ti["subject"] < plain["subject"] / 2 else "") + f"; its {ti['params']:,}-weight, "
        f"{ti['file_bytes'] / 1024:.1f} KiB file leaves every other prompt as the base's (PRES "
        f"{ti['pres']:.3f}, class-prompt subject rate {ti['class_subject']:.0%}). Prompt fidelity (all but the "
        f"subject's colour): single {plain['prompt_single']:.2f} / {prior['prompt_single']:.2f} / "
        f"{ti['prompt_single']:.2f} (DreamBooth without / with prior / textual inversion; base "
        f"{init['prompt_single']:.2f}, real {real['prompt_single']:.2f}), pairs {plain['prompt_pair']:.2f} / "
        f"{prior['prompt_pair']:.2f} / {ti['prompt_pair']:.2f} (base {init['prompt_pair']:.2f}, real "
        f"{real['prompt_pair']:.2f})."]


def section(result: dict[str, Any]) -> str:
    """The RESULTS.md section: what was run, the tables, what they say and the papers' numbers beside them."""
    b, base, t = result["budget"], result["base"], tables(result)
    out = [SECTION, "",
           f"`python benchmarks/adaptation.py` ({platform.machine()}, 1 thread; {result['cpu_s'] / 60:.0f} CPU minutes "
           f"in all, the base and the feature networks included when trained in the run). The base: `configs/shapes-text.yaml` at 16x16 with one or two solid "
           f"shapes, batch {b['batch']}, {base['steps']} steps in {base['train_cpu_s']:.0f} CPU s (the issue's "
           f"preset is 3000 steps of batch 64). Every image: DPM-Solver++(2M), Karras, {b['nfe']} NFE, CFG 3, image "
           f"i of a set from seed i; {b['n']} images per set. FID: against {2 * b['n']} held-out renders in the "
           f"16-pixel shapes attribute network's features; *floor* = its real-vs-real value (half of the reference "
           f"against the other half); at this n every FID has the same upward bias of a few units, so compare rows, "
           f"not sections. *alignment*: the attribute network finds every attribute of the prompt (count, kind, "
           f"colour, size, position); *objects*: the same without the position. The script's docstring defines "
           f"the other scores.", ""]
    if result["lora"]:
        out += ["### LoRA vs full fine-tuning on an unseen style", "",
                f"The style: `data.style: striped` (every shape in horizontal stripes of its colour and a dark shade, "
                f"captioned \"a large striped red circle ...\"), which the base never saw. Each adapted arm trains for "
                f"{b['lora_s']:.0f} CPU s from the base (full fine-tuning at lr 2e-4, LoRA at 2e-3 with alpha = r, "
                f"on the attention projections and, except the last row, the residual blocks' 3x3 convolutions: at "
                f"16 px the base has attention only at 8x8 and 4x4). *hit-rate*: striped prompts (captions of "
                f"held-out striped renders) whose image a striped-vs-solid classifier calls striped; *FID*, *leak* "
                f"(called striped), *alignment* and *objects* on the base's solid prompts (forgetting). Trainable "
                f"params and file: what the run stores (`lora.safetensors`; a whole network for full fine-tuning).",
                "", *t["lora"], "", *lora_text(result["lora"]), ""]
    if result["control"]:
        out += ["### ControlNet, T2I-Adapter and a concat model from scratch", "",
                f"Control: the foreground mask of held-out renders, prompt: their caption. ControlNet and T2I-Adapter "
                f"train for {b['control_s']:.0f} CPU s on the frozen base (lr 1e-3); the concat model (the mask as a "
                f"4th input channel, Palette-style) trains from scratch for the base's CPU time plus that, equal total "
                f"CPU. *mask IoU*: control vs the foreground of the output (pixels differing from the corner by more "
                f"than 0.25); the base row is the IoU of uncontrolled images with the same masks (chance).", "",
                *t["control"], "", f"Mask IoU against training steps ({b['n_curve']} prompts; ControlNet and T2I-Adapter at "
                f"the checkpoints nearest {', '.join(f'{f:.3g}' for f in CURVE_FRACTIONS)} of the run, their step "
                f"0 being the base (zero-initialised output); the concat model at {b['curve_points']} even points):", "", *t["curve"],
                "", *control_text(result["control"], result["curve"]), ""]
    if result["subject"]:
        out += ["### DreamBooth, prior preservation and textual inversion", "",
                f"The subject: an orange star with a blue disc (`data.subject`), 4 instance images ("
                + "; ".join(f"\"{c}\"" for c in result["instance_captions"]) + f"). {b['db_steps']} steps of batch 4 "
                f"each: DreamBooth full fine-tuning at lr 2e-4, with prior preservation (lambda 1, {b['num_class']} "
                f"class images of \"{CLASS_PROMPT}\" from the base) and without; textual inversion of one `{TOKEN}` "
                f"row from \"{INITIALIZER}\" at lr 5e-3. {b['n_subject']} images per prompt set: subject prompts "
                f"(8 prompts \"a large W star in the centre\", ... cycled), pairs (\"a large W star left of a small "
                f"red circle\", ...) and class prompts (\"a large orange star ...\": *PRES* and the subject rate "
                f"there). *prompt fidelity*: every attribute of the prompt but the subject's colour (the attribute "
                f"network reads the orange-and-blue star of real renders as orange in "
                f"{by_model(result['subject'])['real subject renders']['colour_read']:.0%} of them); *DINO*: cosine of "
                f"self-supervised (SimCLR) features, centred on their mean over renders, to the instance images; the "
                f"first row is fresh renders of the subject (one shape; for the pairs, two shapes), "
                f"the ceiling of each score.", "",
                *t["subject"], "", *subject_text(result["subject"]), ""]
    out += PAPERS
    return "\n".join(out).rstrip() + "\n"


#: What the papers report, beside the tables (and why the numbers here differ).
PAPERS = [
    "### The papers' numbers beside these", "",
    "- LoRA (Hu et al. 2022): on GPT-3 175B, 4.7M trainable parameters match or beat full fine-tuning (WikiSQL "
    "73.4 vs 73.8, MNLI 91.7 vs 89.5), with checkpoints ~10,000x smaller (350 GB to 35 MB) and 25% faster "
    "training steps; rank 1-4 on the attention projections is already enough there. Biderman et al. 2024 "
    "(\"LoRA learns less and forgets less\") find LoRA behind full fine-tuning on the new domain but better at "
    "keeping the source domain. Here the file ratio and the cheaper step reproduce; the base is 1.6M weights, not "
    "175B, so the adapter is a few percent of it rather than a ten-thousandth.",
    "- ControlNet (Zhang et al. 2023): zero convolutions keep the base exact at step 0 and the model \"suddenly\" "
    "follows the condition, usually within 10k steps (their Fig. 4: step 6133; the repository's notes: 3k-7k "
    "steps at batch 4); ControlNet++ (Li et al. 2024) measures 32.6 segmentation mIoU for ControlNet on ADE20K "
    "against 50.7 for real images. T2I-Adapter (Mou et al. 2023): a ~77M-parameter adapter run once per "
    "sample, beside ControlNet's ~361M-parameter encoder copy, with comparable control. Here the adapters train a few "
    "hundred steps of batch 32 on a 16-px, 1.6M-weight base, so \"within 10k steps\" becomes \"within the first "
    "checkpoints\".",
    "- DreamBooth (Ruiz et al. 2023, Table 3, Imagen, 15 subjects): PRES 0.493 with prior preservation against "
    "0.664 without, DIV 0.391 against 0.371, DINO 0.684 against 0.712 (subject fidelity a little lower with the "
    "prior). Table 1: DINO 0.668 for DreamBooth and 0.569 for textual inversion on Stable Diffusion (real images "
    "0.774). Their features are DINO ViT-S/16 and LPIPS on 512-1024 px photographs; ours are a small SimCLR CNN "
    "on 16-px renders whose subject differs from its class by a 3-pixel disc, so only the direction of each "
    "comparison carries over, not the values.",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=None,
                    help="where the runs and feature networks are cached (default runs/bench-adaptation; "
                         "--quick: a temporary folder)")
    ap.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run")
    ap.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    ap.add_argument("--json", type=Path, default=None, help="also write every number to this JSON file")
    ap.add_argument("--parts", default="lora,control,subject", help="comma-separated subset of lora,control,subject")
    args = ap.parse_args()
    b = QUICK if args.quick else Budget()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="adabench-") as tmp:
        work = args.work or (Path(tmp) if args.quick else ROOT / "runs" / "bench-adaptation")
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.process_time()
        base = work / "base"
        base_info = train(config(budget=b), base, seconds=b.base_s, minimum=b.min_steps)
        judges = Judges(b, work / "features")
        parts = set(args.parts.split(","))
        result: dict[str, Any] = {"base": base_info, "budget": b.__dict__, "lora": [], "control": [], "curve": [],
                                  "subject": [], "instance_captions": []}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # FID at few images, resized inputs: said in the text
            if "lora" in parts:
                result["lora"] = lora_part(base, work, b, judges)
            if "control" in parts:
                result["control"], result["curve"] = control_part(base, base_info, work, b, judges)
            if "subject" in parts:
                result["subject"], result["instance_captions"] = subject_part(base, work, b, judges)
        result["cpu_s"] = time.process_time() - t0
    text = section(result) if all(result[k] for k in ("lora", "control", "subject")) else "\n".join(
        [SECTION, "", *(line for t in tables(result).values() for line in [*t, ""])])
    print(text)
    print(f"total CPU {result['cpu_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    if not args.no_write and not args.quick:
        write_section(text, SECTION)


if __name__ == "__main__":
    main()
