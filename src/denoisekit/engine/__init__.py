"""The training engine: one loop (:class:`Engine`) for every recipe (:class:`Recipe`), and what it owns once:
atomic checkpoints (:mod:`.checkpoint`), the seeded resumable data stream (:mod:`.stream`), EMA (:mod:`.ema`),
optimisers and the LR profile (:mod:`.optim`), logs (:mod:`.runlog`) and the runs a run depends on
(:mod:`.lineage`). It knows no network, dataset or loss: recipes (``denoisekit.train.recipes``, the feature
networks of ``denoisekit.eval``) bring those."""

from .loop import Engine
from .optim import TrainingDiverged
from .recipe import Dependency, EMASpec, OptimizerSpec, Recipe

__all__ = ["Dependency", "EMASpec", "Engine", "OptimizerSpec", "Recipe", "TrainingDiverged"]
