"""Learn new tokens for a frozen text-to-image run (``train.recipe: textual_inversion``; Gal et al. 2023).

The diffusion recipe's data, condition, loss and previews, with these changes: the network starts from the
base run (``init.from_run``, required) and is frozen whole; the frozen MiniLM text encoder gets the
``textual_inversion`` section's placeholder tokens as new rows of its word-embedding table
(:mod:`denoisekit.models.text_inversion`), initialised from the initializer word, and those rows are all
that trains and all that checkpoints store. Training captions get the placeholder by ``replace`` or
``template`` (:class:`~denoisekit.train.inversion_config.TextualInversionSection`). At the end the EMA rows
are written to ``RUN/embedding.safetensors``, for
``denoisekit sample BASE --embedding RUN/embedding.safetensors --prompt "a <my-star> shape"``.

A config::

    train: {recipe: textual_inversion, steps: 300}
    init:  {from_run: runs/shapes-text}             # the base; data, model and condition as its own
    textual_inversion: {tokens: [<my-star>], initializer: star, num_vectors: 2, template: "a large {}"}
    data:  {name: shapes, subject: 1.0}              # images of the concept
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from ...engine.recipe import Dependency
from ...models.text_inversion import EMBEDDING_FILE, TokenEmbeddings, attach, encoder_sha256, save_embeddings
from .diffusion import DiffusionRecipe

if TYPE_CHECKING:
    from ...engine.loop import Engine

KEY = "token_embeddings.vectors"


class TextualInversionRecipe(DiffusionRecipe):
    """The diffusion recipe on a frozen text-to-image base training only new token rows (module docstring)."""

    name = "textual_inversion"

    def dependencies(self) -> list[Dependency]:
        c = self.config
        if c.init.from_run is None:
            raise ValueError("train.recipe is 'textual_inversion' but init.from_run is not set (the base run)")
        if c.init.trainable:
            raise ValueError("train.recipe 'textual_inversion' trains the new token rows only: drop init.trainable")
        if c.condition.kind != "text" or c.condition.options.get("encoder", "minilm") != "minilm":
            raise ValueError("train.recipe 'textual_inversion' needs a text run on MiniLM "
                             "(condition.kind: text, condition.encoder: minilm)")
        return super().dependencies()

    def build(self, engine: Engine) -> dict[str, nn.Module]:
        modules = super().build(engine)  # the base run's weights, loaded per init.from_run
        net, ti = modules["net"], self.config.textual_inversion
        net.requires_grad_(False)
        encoder = net.encoder
        embeddings = TokenEmbeddings.initialized(encoder, ti.tokens, ti.initializer, ti.num_vectors)
        attach(net, embeddings.to(engine.device))
        self.encoder_sha256 = encoder_sha256(encoder)
        self.delta = {KEY}
        return modules

    def step(self, batch: Any, gens: Any, engine: Engine) -> dict[str, Tensor]:
        ti = self.config.textual_inversion
        batch = {**batch, "caption": [ti.caption(c) for c in batch["caption"]]}
        out = super().step(batch, gens, engine)
        # a micro-batch without the token still reaches the rows (a zero gradient), so every process of a
        # distributed run reduces the same gradients
        return {**out, "loss": out["loss"] + 0.0 * self.modules["net"].token_embeddings.vectors.sum()}

    def state(self) -> dict[str, Any]:
        out = super().state()  # delta_of is set: the checkpoint holds only the new rows
        out.pop("delta_of", None)
        ti = self.config.textual_inversion
        return {**out, "embedding_of": "init", "tokens": list(ti.tokens), "num_vectors": ti.num_vectors,
                "text_encoder_sha256": self.encoder_sha256}

    def load_state(self, state: Mapping[str, Any], source: str) -> None:
        super().load_state(state, source)
        if state.get("text_encoder_sha256") not in (None, self.encoder_sha256):
            raise ValueError(f"{source}: the token rows were trained for another text encoder")

    def finish(self, engine: Engine) -> None:
        super().finish(engine)
        if engine.main:
            ema = engine.ema_module("net")
            save_embeddings(ema.token_embeddings, engine.out / EMBEDDING_FILE, ema.encoder.base)
