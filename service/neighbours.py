"""How much a question looks like the questions the book does not cover: its nearest reference questions.

The abstention model's off-topic gate keeps the dev part's off-topic and answerable questions. A new
question is compared with both by embedding; one far closer to "what is the weather in London" than to
any question the book answers is declined, whatever sentence happens to score best. The references'
vectors are embedded once per model and cached on disk (embedding ~150 questions takes about a second).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
# Questions embedded per call when the references are first embedded (bounded memory, same vectors).
ENCODE_BATCH = 32


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


def reference_vectors(
    texts: Sequence[str], encode: Callable[[list[str]], np.ndarray], cache_dir: Path | None, model_key: str
) -> np.ndarray:
    """The unit query vectors of `texts`, from the cache when this model embedded the same texts before.

    A missing, unreadable or mismatched cache file is embedded again; a cache that cannot be written is
    only a slower next start.
    """
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    digest = hashlib.sha256(json.dumps([model_key, list(texts)], ensure_ascii=False).encode("utf-8")).hexdigest()
    path = cache_dir / "reference-questions" / f"{digest[:32]}.npy" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.ndim == 2 and cached.shape[0] == len(texts) and np.isfinite(cached).all():
                return cached.astype(np.float32, copy=False)
        except (OSError, ValueError) as error:
            log.warning("reference question vectors unreadable, embedding again: %s (%s)", path, error)
    batches = [encode(list(texts[i : i + ENCODE_BATCH])) for i in range(0, len(texts), ENCODE_BATCH)]
    vectors = _unit_rows(np.vstack(batches))
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(handle, "wb") as file:
                np.save(file, vectors, allow_pickle=False)
            os.replace(temporary, path)
        except OSError as error:
            log.warning("reference question vectors not cached: %s (%s)", path, error)
    return vectors


class ReferenceQuestions:
    """Off-topic and answerable reference questions with their vectors; `likeness` compares a question with both."""

    def __init__(
        self,
        off_topic: Sequence[str],
        answerable: Sequence[str],
        encode: Callable[[list[str]], np.ndarray],
        cache_dir: Path | None = None,
        model_key: str = "",
    ) -> None:
        if not off_topic or not answerable:
            raise ValueError("reference questions need both off-topic and answerable questions")
        self.off_topic = tuple(off_topic)
        self.answerable = tuple(answerable)
        vectors = reference_vectors([*self.off_topic, *self.answerable], encode, cache_dir, model_key)
        self._off_vectors = vectors[: len(self.off_topic)]
        self._answerable_vectors = vectors[len(self.off_topic) :]

    def likeness(self, vector: np.ndarray, own_texts: Collection[str] = ()) -> float:
        """Best cosine to an off-topic reference minus best cosine to an answerable one (> 0: looks off-topic).

        References whose text is in `own_texts` (the question itself) are skipped, so a reference question
        is judged on its neighbours as it was when the gate was fitted.
        """
        unit = _unit_rows(np.asarray(vector).reshape(1, -1))[0]
        return _best(self._off_vectors @ unit, self.off_topic, own_texts) - _best(
            self._answerable_vectors @ unit, self.answerable, own_texts
        )


def _best(cosines: np.ndarray, texts: Sequence[str], own_texts: Collection[str]) -> float:
    own = {text.strip() for text in own_texts}
    kept = [float(c) for c, text in zip(cosines, texts) if text.strip() not in own]
    return max(kept) if kept else -1.0
