"""What ``denoisekit train`` says before and while a diffusion run trains: the start-up summary (the data, the
labels and captions found and whether the config uses them, the network, the schedule) and a time estimate
measured on the run's own first warm steps, never guessed from constants.

    data: 200 images in photos (folder), 32x32, 3 channels
      data.size: 32 (not set: the folder's most common image size, 32x32, 200 of 200 images)
      classes: 3 class sub-folders (cat, dog, fox), not used (condition.kind: none); to use them: ...
      captions: none (no metadata.jsonl with text or caption)
    model: unet, 1.9 M parameters (1.9 M trained)
    training: 3000 steps of batch 32 (480 epochs), from step 0; cpu
    speed: 0.41 s/step over steps 2-4: about 20 min 30 s for the remaining 2996 steps (+ sample grids every 1000 steps)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .config import Config

#: Steps left out of the estimate: the first pays for lazy set-up (data loader workers, kernels, allocator).
WARM_STEPS = 1
#: Steps the estimate averages over, after the warm ones.
MEASURED_STEPS = 3
#: How many class names a summary line lists.
SHOWN_CLASSES = 8


def wrapped_attribute(dataset: Any, name: str) -> Any:
    """``name`` of ``dataset`` or of the dataset it wraps (a label subset, latents), else None."""
    for _ in range(8):  # wrappers are shallow; a cycle must not hang the summary
        value = getattr(dataset, name, None)
        if value is not None or getattr(dataset, "dataset", None) is None:
            return value
        dataset = dataset.dataset
    return None


def _kinds(config: Config) -> tuple[str, ...]:
    kind = config.condition.kind
    return (kind,) if isinstance(kind, str) else tuple(kind)


def _used(used: bool, config: Config, hint: str) -> str:
    kind = config.condition.kind
    shown = kind if isinstance(kind, str) else f"[{', '.join(kind)}]"
    return f"used (condition.kind: {shown})" if used else f"not used (condition.kind: {shown}); to use them: {hint}"


def labels_line(config: Config, dataset: Any) -> str:
    """Which classes the data has (class sub-folders for a folder) and whether the config uses them."""
    folder = config.data.name == "folder"
    classes = wrapped_attribute(dataset, "classes") or ()
    if not classes:
        return "classes: none (no class sub-folders)" if folder else "classes: none"
    names = ", ".join(map(str, classes[:SHOWN_CLASSES])) + (", ..." if len(classes) > SHOWN_CLASSES else "")
    what = "class sub-folders" if folder else "classes"
    hint = f"--set condition.kind=class --set model.num_classes={len(classes)}"
    return f"classes: {len(classes)} {what} ({names}), {_used('class' in _kinds(config), config, hint)}"


def captions_line(config: Config, dataset: Any) -> str | None:
    """Which captions the data has (a folder's metadata.jsonl) and whether the config uses them; None for a
    dataset that does not say."""
    captions = wrapped_attribute(dataset, "captions")
    if captions is None:
        return "captions: none (no metadata.jsonl with text or caption)" if config.data.name == "folder" else None
    count = sum(1 for c in captions if c)
    where = " in metadata.jsonl" if config.data.name == "folder" else ""
    hint = ("--set condition.kind=text --set model.context_dim=384 (MiniLM; or --set condition.encoder=tokens "
            "--set model.context_dim=128 for a learned encoder)")
    return f"captions: {count}{where}, {_used('text' in _kinds(config), config, hint)}"


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n:,}"


def startup_summary(config: Config, dataset: Any, image_shape: Sequence[int], modules: dict[str, Any],
                    trained: Sequence[str], *, step: int, device: Any, notes: Sequence[str] = ()) -> list[str]:
    """The lines of the start-up summary (module docstring); ``notes`` (what the data decided) go under the data."""
    d, tc = config.data, config.train
    root = d.options.get("root")
    source = f"{root} ({d.name})" if root else d.name
    c, *hw = image_shape
    shape = "x".join(map(str, hw)) + f", {c} channels"
    if config.latent.autoencoder is not None:
        shape = f"latents {shape} (autoencoder {config.latent.autoencoder})"
    lines = [f"data: {len(dataset)} images in {source}, {shape}", *(f"  {n}" for n in notes),
             f"  {labels_line(config, dataset)}"]
    caps = captions_line(config, dataset)
    if caps is not None:
        lines.append(f"  {caps}")
    total = sum(p.numel() for m in modules.values() for p in m.parameters())
    learn = sum(p.numel() for k in trained for p in modules[k].parameters() if p.requires_grad)
    lines.append(f"model: {config.model.name}, {_millions(total)} parameters ({_millions(learn)} trained)")
    epochs = tc.steps * tc.batch_size / max(1, len(dataset))
    lines.append(f"training: {tc.steps} steps of batch {tc.batch_size} ({epochs:.3g} epochs), from step {step}; "
                 f"{device}")
    return lines


def duration(seconds: float) -> str:
    """``"1 h 05 min"``, ``"20 min 30 s"``, ``"12 s"``."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{seconds:.3g} s"


class StepTimer:
    """Times a run's first steps and, once :data:`MEASURED_STEPS` warm ones are measured, says how long the rest
    takes at that rate (the line, once; None before and after). Sample grids and checkpoints are extra."""

    def __init__(self, start: int, end: int, preview_every: int = 0):
        self.start, self.end, self.every = start, end, preview_every
        self.times: list[float] = []

    def record(self, step: int, seconds: float) -> str | None:
        """Record that step ``step`` (1-based, just done) took ``seconds``."""
        first = self.start + WARM_STEPS + 1
        if step < first or len(self.times) >= MEASURED_STEPS:
            return None
        self.times.append(seconds)
        left = self.end - step
        if len(self.times) < MEASURED_STEPS or left < 1:
            return None
        rate = sum(self.times) / len(self.times)
        grids = f" (+ sample grids every {self.every} steps)" if self.every else ""
        plural = "s" if left != 1 else ""
        return (f"speed: {rate:.3g} s/step over steps {first}-{step}: about {duration(rate * left)} for the "
                f"remaining {left} step{plural}{grids}")

