"""The ``textual_inversion`` section of a run config: the concept the ``textual_inversion`` recipe learns
(other recipes ignore it; Gal et al. 2023).

============  ===================================================================================
key           meaning
============  ===================================================================================
tokens        the placeholder tokens, ``<name>`` each (e.g. ``[<my-star>]``), new rows of MiniLM's table
initializer   the word whose embedding every new row starts from (e.g. ``star``)
num_vectors   rows per token (Gal et al. use 1; more vectors, more capacity)
replace       a word of the training captions that becomes the first token (``star``: "a large red star"
              -> "a large red <my-star>"); captions without it are kept as they are
template      instead, every training caption is this, ``{}`` the first token (e.g. ``"a {} shape"``)
============  ===================================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..models.text_inversion import TOKEN
from ..options import Section


@dataclass(frozen=True)
class TextualInversionSection(Section):
    """Options of the ``textual_inversion`` recipe (see the module docstring)."""

    _key: ClassVar[str] = "textual_inversion"
    tokens: tuple[str, ...] = ("<concept>",)
    initializer: str = "shape"
    num_vectors: int = 1
    replace: str | None = None
    template: str | None = None

    def _check(self) -> None:
        self._require(bool(self.tokens) and all(TOKEN.fullmatch(t) for t in self.tokens), "tokens",
                      "a list of '<name>' tokens (letters, digits, - and _)")
        self._require(len(set(self.tokens)) == len(self.tokens), "tokens", "tokens that do not repeat")
        self._require(bool(self.initializer.strip()), "initializer", "a word")
        self._require(self.num_vectors >= 1, "num_vectors", "an integer >= 1")
        self._require(self.template is None or "{}" in self.template, "template", "a string with '{}'")
        self._require(self.replace is None or self.template is None, "replace", "null when template is set")

    def caption(self, caption: str) -> str:
        """The training caption with the placeholder (``replace`` or ``template``; else unchanged)."""
        if self.template is not None:
            return self.template.format(self.tokens[0])
        if self.replace:
            return " ".join(self.tokens[0] if w == self.replace else w for w in caption.split(" "))
        return caption
