"""Guardrails, the same for every key: prompt and image moderation behind one interface.

`safety_tolerance` (0 strictest - 6 most permissive, as in the public API) sets the threshold:
a term's level L is the lowest tolerance that allows it: it blocks a prompt when `tolerance < L`
(level 7: at every tolerance; the default tolerance 2 blocks levels 3 and up); an image
classifier's score s in [0, 1] blocks an image when `s > 0.2 + 0.1 * tolerance`. There is no
per-key setting or exemption: the functions never see the key. Every decision is logged by the
caller with its reason.

The term list is a JSON file `{"term": level, ...}` (matched as whole words, case-insensitive);
the image classifier is `package.module:function(image: PIL.Image) -> float`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image

from flowfactory.errors import UserError

DEFAULT_TERMS = {  # a conservative example list; operators replace it with their own file
    "csam": 7, "child sexual": 7, "child porn": 7, "bestiality": 7,
    "beheading": 5, "gore": 4, "dismembered": 4, "nude": 3, "naked": 3, "nsfw": 3, "blood": 2,
}  # fmt: skip


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


class Moderator:
    def __init__(self, terms: dict[str, int] | None = None, classifier: Callable[[Image.Image], float] | None = None):
        self.terms = dict(DEFAULT_TERMS if terms is None else terms)
        self.classifier = classifier
        self._patterns = [(re.compile(rf"\b{re.escape(t.lower())}\b"), t, lvl) for t, lvl in self.terms.items()]

    @classmethod
    def from_files(cls, terms_file: str | None = None, classifier: str | None = None) -> "Moderator":
        terms = None
        if terms_file:
            try:
                terms = {str(k): int(v) for k, v in json.loads(Path(terms_file).read_text()).items()}
            except (OSError, ValueError, AttributeError) as e:
                raise UserError(f"cannot read the term list {terms_file} (JSON object of term: level): {e}") from None
        fn = None
        if classifier:
            from flowfactory.data.curate import load_scorer

            fn = load_scorer(classifier)
        return cls(terms, fn)

    def prompt(self, text: str, tolerance: int) -> Decision:
        low = text.lower()
        for pattern, term, level in self._patterns:
            if tolerance < level and pattern.search(low):
                return Decision(False, f"prompt term '{term}' (level {level}) above tolerance {tolerance}")
        return Decision(True, f"prompt passed the term list at tolerance {tolerance}")

    def image(self, image: Image.Image, tolerance: int) -> Decision:
        if self.classifier is None:
            return Decision(True, "no image classifier configured")
        score, threshold = float(self.classifier(image)), 0.2 + 0.1 * tolerance
        if score > threshold:
            return Decision(False, f"image classifier score {score:.3f} > {threshold:.2f} (tolerance {tolerance})")
        return Decision(True, f"image classifier score {score:.3f} <= {threshold:.2f} (tolerance {tolerance})")
