"""Run outputs of the main process: CSV and TensorBoard logs (scalars and the preview grids), the loss curve.
(Image grids are :func:`denoisekit.eval.plotting.save_grid`.)"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


from ..io import write_atomic, write_text_atomic


def read_log_rows(path: Path) -> list[dict[str, str]]:
    """The data rows of a run's ``log.csv`` or ``metrics.csv`` (none if the file is missing)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if (r.get("step") or "").isdigit()]


def save_loss_curve(log: Path, png: Path) -> None:
    """``png``: the ``loss`` column of the CSV log ``log`` against its ``step`` (log scale)."""
    from matplotlib.figure import Figure  # no pyplot: leaves the user's backend alone

    pts = [(int(r["step"]), float(r["loss"])) for r in read_log_rows(log)]
    pts = [(s, v) for s, v in pts if math.isfinite(v)]
    fig = Figure(figsize=(6, 3.6), dpi=100)
    ax = fig.subplots()
    if pts:
        ax.plot(*zip(*pts), lw=1.2)
        if all(v > 0 for _, v in pts):
            ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="loss", title="training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    write_atomic(png, lambda p: fig.savefig(p, format="png"))


#: Where a recipe's preview grids go in the run directory (``step_*.png``), sent to TensorBoard as images.
PREVIEWS = "samples"
_TB_WARNED = False


def _summary_writer(log_dir: Path, purge_step: int | None) -> Any:
    global _TB_WARNED
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        if not _TB_WARNED:
            warnings.warn(f"TensorBoard logging is off ({e}); pip install tensorboard to enable it")
            _TB_WARNED = True
        return None
    return SummaryWriter(str(log_dir), purge_step=purge_step)


class RunLog:
    """The main process's logs: ``log.csv``, ``metrics.csv``, TensorBoard ``tb/`` and ``loss.png``.

    On resume, rows after the checkpoint's step (written before an interruption) are dropped, so the
    logs read as if the run had never stopped.
    """

    FIELDS = ("step", "loss", "lr", "grad_norm", "nan_skipped", "images_per_s", "elapsed_s")

    def __init__(self, out: Path, step: int, *, resumed: bool, fields: Sequence[str] | None = None):
        self.out = out
        if fields is not None:
            self.FIELDS = tuple(fields)
        self.files = {"log": (out / "log.csv", self.FIELDS), "metrics": (out / "metrics.csv", ("step", "name", "value"))}
        for path, fields in self.files.values():
            rows = [r for r in self._rows(path) if int(r["step"]) <= step] if resumed else []
            lines = [",".join(fields)] + [",".join(str(r.get(f, "")) for f in fields) for r in rows]
            write_text_atomic(path, "\n".join(lines) + "\n")
        self.tb = _summary_writer(out / "tb", step + 1 if resumed else None)
        self._imaged = step if resumed else -1  # the step of the last preview grid sent to TensorBoard

    _rows = staticmethod(read_log_rows)

    def _append(self, name: str, values: Sequence[Any]) -> None:
        with open(self.files[name][0], "a") as f:
            f.write(",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in values) + "\n")

    def log(self, row: Mapping[str, Any]) -> None:
        self._append("log", [row[f] for f in self.FIELDS])
        if self.tb is not None:
            for k in self.FIELDS[1:]:
                self.tb.add_scalar(f"train/{k}", row[k], row["step"])
            self.images()

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        for k, v in values.items():
            self._append("metrics", [step, k, float(v)])
            if self.tb is not None:
                self.tb.add_scalar(f"eval/{k}", float(v), step)

    def plot(self) -> None:
        """``loss.png``: the logged loss against the step (log scale)."""
        save_loss_curve(self.files["log"][0], self.out / "loss.png")

    def images(self) -> None:
        """The preview grids written since the last call (``samples/step_*.png``) to TensorBoard as
        ``samples`` at their step."""
        if self.tb is None:
            return
        import numpy as np
        from PIL import Image

        for path in sorted((self.out / PREVIEWS).glob("step_*.png")):
            stem = path.stem.removeprefix("step_")
            if not stem.isdigit() or int(stem) <= self._imaged:
                continue
            step = int(stem)
            with Image.open(path) as im:
                self.tb.add_image("samples", np.asarray(im.convert("RGB")), step, dataformats="HWC")
            self._imaged = step

    def close(self) -> None:
        if self.tb is not None:
            self.images()
            self.tb.close()
