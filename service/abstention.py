"""The abstention decision: a logistic regression over the evidence signals, fitted on the gold set's dev part.

The parameters live in `abstention_model.json` beside this module, with the SHA-256 of the dev questions
they were fitted on; `bookqa fit-abstention` (eval/fit_abstention.py) refits them. At question time the
model is a dot product and a sigmoid: no scikit-learn import, a few microseconds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.evidence import FEATURES

MODEL_PATH = Path(__file__).with_name("abstention_model.json")


class AbstentionModelError(RuntimeError):
    """The committed model file is missing, unreadable or made for other signals; the message says what to run."""


@dataclass(frozen=True)
class OffTopicGate:
    """Decline a question that looks more like the dev part's off-topic questions than its answerable ones.

    `likeness` is service.neighbours.ReferenceQuestions.likeness; `threshold` is the highest likeness of a
    dev answerable question (each judged without itself), so the gate declines none of those.
    """

    threshold: float
    off_topic: tuple[str, ...]
    answerable: tuple[str, ...]

    def declines(self, likeness: float) -> bool:
        return likeness > self.threshold

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": "decline when max cosine to an off-topic dev question minus max cosine to an answerable dev "
            "question > threshold (the highest such value among dev answerable questions, each without itself)",
            "threshold": self.threshold,
            "off_topic": list(self.off_topic),
            "answerable": list(self.answerable),
        }

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> OffTopicGate:
        if not payload["off_topic"] or not payload["answerable"]:
            raise ValueError("the off-topic gate needs off-topic and answerable reference questions")
        return cls(
            threshold=float(payload["threshold"]),
            off_topic=tuple(str(q) for q in payload["off_topic"]),
            answerable=tuple(str(q) for q in payload["answerable"]),
        )


@dataclass(frozen=True)
class AbstentionModel:
    """P(the book answers the question) = sigmoid(intercept + Σ coef·(x − mean)/scale); answer when ≥ threshold.

    `threshold` was chosen on out-of-fold probabilities of the dev part (see eval/fit_abstention.py). The
    optional `off_topic_gate` declines, before the regression, questions that look like off-topic ones.
    """

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    threshold: float
    fitted_on: dict[str, Any] = field(default_factory=dict)
    off_topic_gate: OffTopicGate | None = None

    def probability(self, signals: dict[str, float]) -> float:
        """The probability that the quote answers the question, given its signals."""
        z = self.intercept
        for name, mean, scale, weight in zip(self.features, self.mean, self.scale, self.coef):
            z += weight * (signals.get(name, 0.0) - mean) / scale
        if z < -40:
            return 0.0
        return 1.0 / (1.0 + math.exp(-z))

    def abstains(self, signals: dict[str, float]) -> bool:
        return self.probability(signals) < self.threshold

    def to_json(self) -> dict[str, Any]:
        return {
            "model": "sklearn.linear_model.LogisticRegression on StandardScaler-ed signals",
            "features": list(self.features),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "coef": list(self.coef),
            "intercept": self.intercept,
            "threshold": self.threshold,
            "fitted_on": self.fitted_on,
            **({"off_topic_gate": self.off_topic_gate.to_json()} if self.off_topic_gate else {}),
        }

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> AbstentionModel:
        return cls(
            features=tuple(payload["features"]),
            mean=tuple(float(v) for v in payload["mean"]),
            scale=tuple(float(v) for v in payload["scale"]),
            coef=tuple(float(v) for v in payload["coef"]),
            intercept=float(payload["intercept"]),
            threshold=float(payload["threshold"]),
            fitted_on=dict(payload.get("fitted_on", {})),
            off_topic_gate=OffTopicGate.from_json(payload["off_topic_gate"]) if payload.get("off_topic_gate") else None,
        )


def load_model(path: Path = MODEL_PATH) -> AbstentionModel:
    """The committed abstention model; AbstentionModelError when it is unusable with this code's signals."""
    try:
        model = AbstentionModel.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError as error:
        raise AbstentionModelError(f"답변 판단 모델이 없습니다: {path}. `bookqa fit-abstention`으로 만드세요.") from error
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise AbstentionModelError(
            f"답변 판단 모델을 읽을 수 없습니다 ({path}): {error}. `bookqa fit-abstention`으로 다시 만드세요."
        ) from error
    if set(model.features) - set(FEATURES) or not (
        len(model.features) == len(model.mean) == len(model.scale) == len(model.coef)
    ):
        raise AbstentionModelError(
            f"답변 판단 모델의 신호가 코드와 다릅니다 ({path}). `bookqa fit-abstention`으로 다시 만드세요."
        )
    return model
