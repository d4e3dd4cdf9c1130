"""Progressive distillation's rounds (Salimans & Ho 2022, Algorithm 2's outer loop): N -> N/2 -> ... -> 1 steps.

Each round is an ordinary run of the ``progressive`` recipe whose teacher and starting weights are the previous
round's student (the first round's are the teacher run's), written to ``OUT/nfe-<N>``; a student samples on
its own grid, every second level of its teacher's (``fewstep.sigmas`` in its ``state.json``), and refuses any
other step count. Rerunning resumes: finished rounds are kept, an interrupted one continues, and a round whose
teacher changed since is refused (the engine's dependency hashes).

    distill_progressively("runs/digits", "runs/digits-pd", start=8, overrides=["train.steps=2000"])
    # runs/digits-pd/nfe-8, nfe-4, nfe-2, nfe-1
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .config import load_config
from .recipes.progressive import halving_schedule
from .run import RUN_CONFIG
from .trainer import train_from_config


def round_overrides(teacher: Path, steps: int) -> list[str]:
    """The overrides that make the teacher's config a ``steps``-step progressive student of it."""
    return ["train.recipe=progressive", f"teacher.run={teacher}", f"init.from_run={teacher}", f"sample.nfe={steps}",
            "sample.sampler=ddim"]


def distill_progressively(teacher_run: str | os.PathLike[str], out_dir: str | os.PathLike[str], start: int, *,
                          stop: int = 1, overrides: Sequence[str] = (), progress: bool = True) -> list[Path]:
    """Train the rounds ``start, start/2, ..., stop`` (powers of two) under ``out_dir`` from ``teacher_run``'s
    config (with ``overrides``, e.g. ``train.steps``); returns the students' run directories in order."""
    teacher = Path(teacher_run)
    if not (teacher / RUN_CONFIG).is_file():
        raise FileNotFoundError(f"{teacher}: not a run directory (no {RUN_CONFIG})")
    counts = halving_schedule(start)
    if stop not in counts:
        raise ValueError(f"stop must be one of the rounds {counts}, got {stop}")
    config = teacher / RUN_CONFIG
    load_config(config, list(overrides))  # bad overrides fail here, before any round trains
    runs: list[Path] = []
    for steps in counts[:counts.index(stop) + 1]:
        run = Path(out_dir) / f"nfe-{steps}"
        train_from_config(config, run, overrides=[*round_overrides(teacher, steps), *overrides], resume=True,
                          progress=progress)
        runs.append(run)
        teacher = run
    return runs
