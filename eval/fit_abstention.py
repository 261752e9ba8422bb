"""Fit the abstention model on the gold set's dev part, and measure which signal matters (an ablation).

Each dev question goes through `QAService.evidence`, the same retrieval and evidence `ask` decides on;
a scikit-learn LogisticRegression over the standardised signals learns P(the book answers it). The
threshold is chosen on out-of-fold probabilities of the dev part (repeated stratified 5-fold): the
highest whose false abstentions on answerable questions stay within FALSE_ABSTENTION_BUDGET. The test
part is never seen by the fit; the ablation reads it only to report what each signal group is worth.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib.metadata import version
from pathlib import Path

import numpy as np

from eval.gold import GoldQuestion
from service.abstention import AbstentionModel, OffTopicGate
from service.answer import model_key
from service.evidence import FEATURES, SIGNAL_GROUPS
from service.neighbours import ReferenceQuestions
from service.qa import QAService

# What a fit learns from (relative to the repository): the gold set, of which only the dev part is read, and
# 412 more questions written later by four other authors from the book alone, all dev (eval/gold/train.jsonl).
FIT_GOLD_FILES = (Path("eval/gold/qa.jsonl"), Path("eval/gold/train.jsonl"))
# The answerable share the model may decline (out of fold, on dev). Issue 10 bounds false abstentions at 3 %;
# a budget of exactly 3 % meets it on unseen dev questions and no more (nested 5-fold cross-validation on the
# 626 dev questions: unseen false abstentions 3.0 %, near-topic recall 0.875), while 2 % leaves room for
# wording the dev part lacks at little cost (1.6 %, 0.863; 2.5 %: 2.7 %, 0.872).
FALSE_ABSTENTION_BUDGET = 0.02
# LogisticRegression's inverse regularisation strength (scikit-learn's default).
REGULARISATION_C = 1.0
CV_FOLDS, CV_REPEATS = 5, 5
THRESHOLD_GRID = tuple(round(t, 2) for t in np.arange(0.02, 0.99, 0.01))



def dev_questions(gold: Sequence[GoldQuestion]) -> list[GoldQuestion]:
    """The questions a fit may see: the dev part (every question of a file without splits)."""
    dev = [q for q in gold if q.split == "dev"]
    return dev or [q for q in gold if q.split is None]


def data_sha256(questions: Sequence[GoldQuestion]) -> str:
    """SHA-256 of what the fit learns from: each dev question's id, wording and label, in file order."""
    canonical = [{"id": q.id, "question": q.question, "answerable": q.answerable} for q in questions]
    return hashlib.sha256(json.dumps(canonical, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


def signal_matrix(qa: QAService, questions: Sequence[GoldQuestion]) -> np.ndarray:
    """One row of FEATURES per question, as `ask` would measure them (top_k 5, hybrid, no history)."""
    return np.array([[qa.evidence(q.question).features[name] for name in FEATURES] for q in questions], dtype=np.float64)


def reference_questions(qa: QAService, dev: Sequence[GoldQuestion]) -> ReferenceQuestions | None:
    """The dev part's off-topic and answerable questions with their vectors (None without off-topic ones)."""
    off_topic = [q.question for q in dev if q.kind == "off-topic"]
    answerable = [q.question for q in dev if q.answerable]
    if not off_topic or not answerable:
        return None
    engine = qa.engine
    return ReferenceQuestions(
        off_topic, answerable, engine.embedder.encode_queries, engine.settings.cache_dir, model_key(engine)
    )


def likeness(qa: QAService, references: ReferenceQuestions, questions: Sequence[GoldQuestion]) -> np.ndarray:
    """Each question's off-topic likeness as `ask` measures it (a reference is never its own neighbour)."""
    return np.array(
        [references.likeness(qa.engine.embed_query(q.question)[0], own_texts=(q.question,)) for q in questions]
    )


def fit_off_topic_gate(
    qa: QAService, dev: Sequence[GoldQuestion], references: ReferenceQuestions | None
) -> OffTopicGate | None:
    """The gate's threshold: the highest likeness of a dev answerable question, so it declines none of them."""
    if references is None:
        return None
    answerable = [q for q in dev if q.answerable]
    threshold = math.ceil(float(likeness(qa, references, answerable).max()) * 1e6) / 1e6
    return OffTopicGate(threshold, references.off_topic, references.answerable)


def _pipeline():  # scikit-learn is imported only for fitting, never at question time
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=REGULARISATION_C, max_iter=10_000))


def out_of_fold(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(answerable) of each question from models that did not see it, averaged over repeated folds."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    runs = [
        cross_val_predict(
            _pipeline(), x, y, cv=StratifiedKFold(CV_FOLDS, shuffle=True, random_state=seed), method="predict_proba"
        )[:, 1]
        for seed in range(CV_REPEATS)
    ]
    return np.mean(runs, axis=0)


def choose_threshold(probabilities: np.ndarray, answerable: np.ndarray) -> float:
    """The highest threshold whose abstentions on answerable questions stay within the budget."""
    allowed = [t for t in THRESHOLD_GRID if np.mean(probabilities[answerable == 1] < t) <= FALSE_ABSTENTION_BUDGET]
    return max(allowed) if allowed else THRESHOLD_GRID[0]


def fit_model(raw: np.ndarray, y: np.ndarray, features: Sequence[str], fitted_on: dict[str, object]) -> AbstentionModel:
    """Logistic regression over the columns `features` of `raw` (rows of FEATURES), threshold from out-of-fold
    probabilities; the parameters as a model."""
    x = raw[:, [FEATURES.index(name) for name in features]]
    pipeline = _pipeline().fit(x, y)
    scaler, regression = pipeline[0], pipeline[1]
    threshold = choose_threshold(out_of_fold(x, y), y)
    return AbstentionModel(
        features=tuple(features),
        mean=tuple(round(float(v), 8) for v in scaler.mean_),
        scale=tuple(round(float(v), 8) for v in scaler.scale_),
        coef=tuple(round(float(v), 8) for v in regression.coef_[0]),
        intercept=round(float(regression.intercept_[0]), 8),
        threshold=threshold,
        fitted_on=fitted_on,
    )


def fit_on_gold(qa: QAService, gold: Sequence[GoldQuestion], gold_paths: Sequence[Path]) -> AbstentionModel:
    """The abstention model fitted on the dev part of `gold` (read from `gold_paths`), with what it was fitted on
    recorded."""
    dev = dev_questions(gold)
    y = np.array([int(q.answerable) for q in dev])
    fitted_on = {
        "gold": " + ".join(path.as_posix() for path in gold_paths),
        "split": "dev",
        "questions": len(dev),
        "answerable": int(y.sum()),
        "data_sha256": data_sha256(dev),
        "false_abstention_budget": FALSE_ABSTENTION_BUDGET,
        "regularisation_c": REGULARISATION_C,
        "threshold_rule": f"highest threshold with out-of-fold false abstentions <= {FALSE_ABSTENTION_BUDGET} "
        f"({CV_REPEATS}x stratified {CV_FOLDS}-fold on dev)",
        "scikit_learn": version("scikit-learn"),
        "model": qa.engine.manifest.model.name,
        # The signals hold cosines: another backend or precision moves them a little (refit then).
        "embedding": f"{qa.engine.manifest.model.backend}/{qa.engine.manifest.model.precision}",
    }
    model = fit_model(signal_matrix(qa, dev), y, FEATURES, fitted_on)
    return replace(model, off_topic_gate=fit_off_topic_gate(qa, dev, reference_questions(qa, dev)))


@dataclass(frozen=True)
class AblationRow:
    """Test-part abstention figures of a model fitted on dev without one signal group."""

    without: str
    threshold: float
    false_abstentions: float
    near_topic_recall: float
    off_topic_recall: float
    precision: float | None


def ablation(qa: QAService, gold: Sequence[GoldQuestion]) -> list[AblationRow]:
    """Refit on dev without each signal group (same threshold rule) and measure on the test part.

    Every row keeps the off-topic gate fitted on dev, except the one that leaves the gate out.
    """
    dev = dev_questions(gold)
    test = [q for q in gold if q.split == "test"]
    x_dev, x_test = signal_matrix(qa, dev), signal_matrix(qa, test)
    y_dev = np.array([int(q.answerable) for q in dev])
    kinds = np.array([q.kind for q in test])
    answerable = np.array([q.answerable for q in test])
    references = reference_questions(qa, dev)
    gate = fit_off_topic_gate(qa, dev, references)
    gated = np.zeros(len(test), dtype=bool)
    if gate is not None and references is not None:
        gated = np.array([gate.declines(value) for value in likeness(qa, references, test)])
    variants = [("(nothing: all signals)", (), True), *((name, dropped, True) for name, dropped in SIGNAL_GROUPS.items())]
    if gate is not None:
        variants.append(("off-topic gate (nearest dev questions)", (), False))
    rows = []
    for name, dropped, with_gate in variants:
        model = fit_model(x_dev, y_dev, [f for f in FEATURES if f not in dropped], {})
        abstained = np.array([model.abstains(dict(zip(FEATURES, row))) for row in x_test])
        if with_gate:
            abstained |= gated
        n_abstained = int(abstained.sum())
        rows.append(
            AblationRow(
                without=name,
                threshold=model.threshold,
                false_abstentions=float(abstained[answerable].mean()),
                near_topic_recall=float(abstained[kinds == "near-topic"].mean()),
                off_topic_recall=float(abstained[kinds == "off-topic"].mean()),
                precision=float((abstained & ~answerable).sum() / n_abstained) if n_abstained else None,
            )
        )
    return rows


def ablation_markdown(rows: Sequence[AblationRow]) -> str:
    """The ablation as a Markdown table, with what moved near-topic abstention most named."""
    full = rows[0]
    lines = [
        "# Abstention ablation",
        "",
        "Each row refits the abstention model on the dev part without one group of signals (threshold by the same "
        "rule) and measures it on the test part. Nothing here chose anything: the committed model uses all signals.",
        "",
        "| without | threshold | false abstentions | near-topic recall | off-topic recall | abstention precision |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        precision = "n/a" if row.precision is None else f"{row.precision:.3f}"
        lines.append(
            f"| {row.without} | {row.threshold:.2f} | {row.false_abstentions:.3f} | {row.near_topic_recall:.3f} "
            f"| {row.off_topic_recall:.3f} | {precision} |"
        )
    biggest = max(rows[1:], key=lambda row: full.near_topic_recall - row.near_topic_recall)
    lines += [
        "",
        f"Removing **{biggest.without}** moves near-topic recall most: {full.near_topic_recall:.3f} → "
        f"{biggest.near_topic_recall:.3f} (false abstentions {full.false_abstentions:.3f} → "
        f"{biggest.false_abstentions:.3f}).",
    ]
    off_topic = max(rows[1:], key=lambda row: full.off_topic_recall - row.off_topic_recall)
    if off_topic.off_topic_recall < full.off_topic_recall:
        lines.append(
            f"Removing **{off_topic.without}** moves off-topic recall most: {full.off_topic_recall:.3f} → "
            f"{off_topic.off_topic_recall:.3f}."
        )
    else:
        lines.append(f"No single group's removal lowers off-topic recall ({full.off_topic_recall:.3f}) on the test part.")
    return "\n".join(lines) + "\n"


def write_model(path: Path, model: AbstentionModel) -> None:
    path.write_text(json.dumps(model.to_json(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
