"""Training. Images: one :class:`Trainer` on accelerate (:func:`train_from_config`, :func:`load_run`).
The 2-D toy workflow: :func:`train_toy2d` and :func:`load_toy2d_run`."""

from .toy2d import Toy2DConfig
from .recipes.toy2d import train_toy2d
from .toy2d import load_run as load_toy2d_run
from .trainer import Trainer, train_from_config
from .run import load_run, run_info
from ..engine.optim import TrainingDiverged
from .zoo import ZooConfig, load_zoo
from .recipes.zoo import train_zoo

__all__ = ["Toy2DConfig", "Trainer", "TrainingDiverged", "load_run", "load_toy2d_run", "run_info", "train_from_config",
           "train_toy2d", "ZooConfig", "load_zoo", "train_zoo"]
