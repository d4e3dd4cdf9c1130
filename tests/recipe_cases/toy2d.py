"""The 2-D toy recipe: a tiny MLP on moons with warm-up, clipping and the EMA (its export goes under workdir)."""

from denoisekit.train.recipes.toy2d import Toy2DRecipe
from denoisekit.train.toy2d import Toy2DConfig

from . import RecipeCase


def make(workdir):
    config = Toy2DConfig(out=str(workdir / "toy2d-export"), data="moons", n_train=40, steps=6, batch=16, warmup=2,
                         model_config={"hidden": 16, "depth": 1, "emb_dim": 8}, ema_decay=0.9, log_every=2)
    return Toy2DRecipe(config)


CASE = RecipeCase("toy2d", make, steps=6)
