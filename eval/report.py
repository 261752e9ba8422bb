"""Write the evaluation's outputs: metrics.json (machine-readable), report.md (for people), report.png (chart).

All three come from the same ModeMetrics, so the table, the chart and the JSON never disagree.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from eval.scoring import GroupMetrics, ModeMetrics, Target, answer_targets

RELEVANCE_NOTE = (
    "A passage is relevant iff its text contains any evidence string of the question (binary relevance). "
    "Recall@k is hit-style: the share of answerable questions with at least one relevant passage in the top k."
)
# (ModeMetrics field, column title) of the Markdown tables.
RETRIEVAL_COLUMNS = (
    ("recall_at_1", "Recall@1"),
    ("recall_at_3", "Recall@3"),
    ("recall_at_5", "Recall@5"),
    ("recall_at_10", "Recall@10"),
    ("mrr_at_10", "MRR@10"),
    ("ndcg_at_10", "nDCG@10"),
)
ANSWER_COLUMNS = (
    ("answer_containment", "containment"),
    ("answer_token_f1", "token F1"),
    ("abstention_precision", "abstention P"),
    ("abstention_recall", "abstention R"),
    ("n_abstained", "abstained"),
    ("latency_p50_ms", "p50 ms"),
    ("latency_p95_ms", "p95 ms"),
)
# (ModeMetrics field, bar label) of the chart.
CHART_METRICS = (
    ("recall_at_1", "Recall@1"),
    ("recall_at_5", "Recall@5"),
    ("mrr_at_10", "MRR@10"),
    ("ndcg_at_10", "nDCG@10"),
    ("answer_containment", "Answer containment"),
)


@dataclass(frozen=True)
class ReportContext:
    """What the figures were measured on: gold file, index manifest, settings, date and run time.

    Kept beside the numbers so a report can be compared with a later one.
    """

    gold_path: str
    created_at: str
    top_k: int
    answer_top_k: int
    elapsed_seconds: float
    index: dict[str, object]
    unfindable_question_ids: list[str] = field(default_factory=list)
    # Answer figures per split and group, in the mode users get by default (see eval.scoring.grouped_metrics).
    groups_mode: str | None = None
    groups: dict[str, dict[str, GroupMetrics]] = field(default_factory=dict)
    # The same figures from an earlier metrics.json (the system before a change), shown beside them.
    baseline: dict[str, dict[str, dict[str, object]]] = field(default_factory=dict)
    baseline_label: str = ""


# (GroupMetrics field, column title) of the per-group tables.
GROUP_COLUMNS = (
    ("answer_containment", "containment"),
    ("false_abstention_rate", "false abst."),
    ("abstention_precision", "abst. P"),
    ("abstention_recall", "abst. R"),
    ("marked_span_precision", "marked span right"),
)
TARGET_SPLIT = "test"


def read_baseline(path: Path) -> dict[str, dict[str, dict[str, object]]]:
    """The per-split group figures of an earlier metrics.json ({} when it has none); ValueError if unreadable."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"기준 결과를 읽을 수 없습니다 ({path}): {error}") from error
    return payload.get("answers_by_group", {}).get("splits", {})


def _targets(groups: dict[str, dict[str, object]] | dict[str, GroupMetrics]) -> list[Target]:
    figures = {
        name: value if isinstance(value, GroupMetrics) else GroupMetrics(**value)  # type: ignore[arg-type]
        for name, value in groups.items()
    }
    return answer_targets(figures)


def write_metrics_json(path: Path, metrics: Sequence[ModeMetrics], context: ReportContext) -> None:
    """metrics.json: the context, the relevance definition and every mode's figures (null = not applicable)."""
    payload = {
        **asdict(context),
        "relevance": RELEVANCE_NOTE,
        "modes": {m.mode: {k: v for k, v in asdict(m).items() if k != "mode"} for m in metrics},
    }
    payload.pop("groups")
    payload.pop("baseline")
    if context.groups:
        payload["answers_by_group"] = {
            "mode": context.groups_mode,
            "splits": {split: {name: asdict(g) for name, g in groups.items()} for split, groups in context.groups.items()},
        }
        split = TARGET_SPLIT if TARGET_SPLIT in context.groups else "all"
        payload["targets"] = {
            "split": split,
            "figures": [{**asdict(t), "met": t.met} for t in _targets(context.groups[split])],
        }
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def _table(metrics: Sequence[ModeMetrics], columns: Sequence[tuple[str, str]]) -> list[str]:
    lines = ["| mode | " + " | ".join(title for _, title in columns) + " |"]
    lines.append("|---|" + "---:|" * len(columns))
    for m in metrics:
        row = asdict(m)
        lines.append(f"| {m.mode} | " + " | ".join(_cell(row[name]) for name, _ in columns) + " |")
    return lines


def _target_lines(context: ReportContext) -> list[str]:
    split = TARGET_SPLIT if TARGET_SPLIT in context.groups else "all"
    after = _targets(context.groups[split])
    before = _targets(context.baseline[split]) if split in context.baseline else None
    lines = [
        f"## Targets of trustworthy answers ({split} part, {context.groups_mode})",
        "",
        "| figure | before | now | target | met |",
        "|---|---:|---:|---:|:---:|",
    ]
    for i, target in enumerate(after):
        bound = f"{'≥' if target.at_least else '≤'} {target.bound:.2f}"
        was = _cell(before[i].value) if before else "n/a"
        met = {True: "yes", False: "**no**", None: "n/a"}[target.met]
        lines.append(f"| {target.name} | {was} | {_cell(target.value)} | {bound} | {met} |")
    if before:
        lines += ["", f"*before*: {context.baseline_label}"]
    return lines


def _shown_splits(context: ReportContext) -> list[str]:
    """Test first (the figures of record), then dev; a gold file without splits shows its whole set."""
    splits = sorted((s for s in context.groups if s != "all"), key=lambda s: (s != TARGET_SPLIT, s))
    return splits or ["all"]


def _group_lines(context: ReportContext, split: str) -> list[str]:
    groups = context.groups[split]
    before = context.baseline.get(split, {})
    titles = " | ".join(f"{title} before | {title} now" if before else title for _, title in GROUP_COLUMNS)
    lines = [
        f"### {split} part" if split != "all" else "### all questions",
        "",
        f"| group | questions | answerable | {titles} |",
        "|---|---:|---:|" + "---:|" * (len(GROUP_COLUMNS) * (2 if before else 1)),
    ]
    for name, figures in groups.items():
        row = asdict(figures)
        cells = []
        for column, _ in GROUP_COLUMNS:
            if before:
                cells.append(_cell(before.get(name, {}).get(column)))
            cells.append(_cell(row[column]))
        lines.append(f"| {name} | {figures.n_questions} | {figures.n_answerable} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(metrics: Sequence[ModeMetrics], context: ReportContext) -> str:
    """report.md's text: retrieval and answer tables with a row per mode, metric definitions and the setup."""
    first = metrics[0]
    index = context.index
    lines = [
        "# bookqa evaluation",
        "",
        f"{context.created_at} · gold `{context.gold_path}`: {first.n_questions} questions "
        f"({first.n_answerable} answerable, {first.n_unanswerable} unanswerable) · "
        f"evaluated in {context.elapsed_seconds:.0f} s",
        "",
        "![modes compared](report.png)",
        "",
        f"## Retrieval (top {context.top_k}, {first.n_answerable} answerable questions)",
        "",
        *_table(metrics, RETRIEVAL_COLUMNS),
        "",
        f"## Answers (as `POST /v1/ask` with top_k={context.answer_top_k})",
        "",
        *_table([m for m in metrics if m.answer_containment is not None], ANSWER_COLUMNS),
        "",
        *(_target_lines(context) + [""] if context.groups else []),
        *(
            [f"## Answers by kind, language and wording ({context.groups_mode})", ""]
            + [line for split in _shown_splits(context) for line in [*_group_lines(context, split), ""]]
            if context.groups
            else []
        ),
        "## What the metrics mean",
        "",
        f"- **Relevance.** {RELEVANCE_NOTE}",
        "- **MRR@10**: mean of 1/rank of the first relevant passage (0 if none in the top 10). "
        "**nDCG@10**: binary nDCG, the ideal ranking puts every relevant chunk of the index first.",
        "- **containment**: share of answerable questions whose answer (not an abstention) contains any gold "
        "answer, case-insensitive. **token F1**: F1 of the answer's Kiwi content morphemes against a gold "
        "answer's (best gold answer; abstention = 0), over answerable questions.",
        "- **abstention P**: of the abstentions, the share on unanswerable questions. **abstention R**: of the "
        "unanswerable questions, the share abstained on. **false abst.**: of the answerable questions, the share "
        "abstained on (containment counts these as misses).",
        "- **marked span right**: of the answer spans marked in answered answerable questions' citations (the "
        "fact the chat highlights and the answer leads with), the share that hold a gold answer or lie inside one "
        "(spaces and case ignored).",
        "- **Groups**: `kind:` what a question asks for (fact, number, date, definition, list, why/how, comparison, "
        "heading = answered only by a heading or the table of contents) or why the book cannot answer it "
        "(near-topic: the book names the subject but not the asked fact; off-topic); `lang:` ko or en; `style:` "
        "book (the book's own words), paraphrase, colloquial. The dev part is what anything fitted or tuned saw; "
        "the test part is what the figures of record are.",
        "- **p50/p95 ms**: wall time of one `QAService.ask` call (retrieval + answer, query embedding not cached).",
        "- **bm25-whitespace** is a reference, not a service mode: BM25 (bm25s) over lower-cased "
        "whitespace-split words of the same chunk texts, to show what Kiwi morphemes add. Retrieval only.",
        "",
        "## Setup",
        "",
        *(f"- {key}: {_cell(value) if not isinstance(value, (dict, list)) else json.dumps(value, ensure_ascii=False)}"
          for key, value in index.items()),
    ]
    if context.unfindable_question_ids:
        lines += [
            "",
            f"Answerable questions whose evidence no chunk contains (misses in every mode): "
            f"{', '.join(context.unfindable_question_ids)}",
        ]
    return "\n".join(lines) + "\n"


def write_report_md(path: Path, metrics: Sequence[ModeMetrics], context: ReportContext) -> None:
    """report.md for people reading the results on GitHub."""
    path.write_text(render_markdown(metrics, context), encoding="utf-8")


# (group, GroupMetrics field, bar label) of the chart's before/now panel, on the test part.
CHART_GROUPS = (
    ("all", "answer_containment", "containment"),
    ("all", "false_abstention_rate", "false abst."),
    ("all", "abstention_precision", "abst. precision"),
    ("kind:near-topic", "abstention_recall", "near-topic R"),
    ("kind:off-topic", "abstention_recall", "off-topic R"),
    ("lang:ko", "answer_containment", "Korean cont."),
    ("lang:en", "answer_containment", "English cont."),
)


def write_report_png(path: Path, metrics: Sequence[ModeMetrics], context: ReportContext | None = None) -> None:
    """report.png: grouped bars, one group per metric, one bar per mode (English labels, no Korean font needed).

    A metric a mode does not have (answers of the reference) is left out and marked n/a. With per-group
    figures, a second panel shows the test part's answer figures now and before (the baseline).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = context.groups if context else {}
    split = TARGET_SPLIT if TARGET_SPLIT in groups else "all"
    n_modes = len(metrics)
    width = 0.8 / max(n_modes, 1)
    if groups:
        fig, (ax, panel) = plt.subplots(2, 1, figsize=(10, 9.5), dpi=120)
    else:
        fig, ax = plt.subplots(figsize=(10, 5.2), dpi=120)
    colors = plt.get_cmap("tab10").colors
    for i, m in enumerate(metrics):
        row = asdict(m)
        for j, (name, _) in enumerate(CHART_METRICS):
            x = j - 0.4 + width * (i + 0.5)
            value = row[name]
            if value is None:
                ax.text(x, 0.01, "n/a", ha="center", va="bottom", fontsize=8, rotation=90, color="dimgrey")
                continue
            ax.bar(x, value, width, color=colors[i % len(colors)])
            ax.text(x, value + 0.01, f"{value:.2f}", ha="center", va="bottom", fontsize=7, rotation=90)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[i % len(colors)]) for i in range(n_modes)]
    ax.legend(
        handles, [m.mode for m in metrics], loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=n_modes, fontsize=9
    )
    ax.set_xticks(range(len(CHART_METRICS)), [label for _, label in CHART_METRICS])
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("score (answerable questions)")
    ax.set_title(f"bookqa retrieval and answers by mode ({metrics[0].n_answerable} answerable questions)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if groups:
        assert context is not None
        series = [("now", groups[split], "tab:blue")]
        if split in context.baseline:
            series.insert(0, ("before", context.baseline[split], "tab:grey"))
        bar = 0.8 / len(series)
        for k, (label, figures, color) in enumerate(series):
            for j, (group, name, _) in enumerate(CHART_GROUPS):
                found = figures.get(group)
                value = (getattr(found, name) if isinstance(found, GroupMetrics) else (found or {}).get(name)) if found else None
                x = j - 0.4 + bar * (k + 0.5)
                if value is None:
                    panel.text(x, 0.01, "n/a", ha="center", va="bottom", fontsize=8, rotation=90, color="dimgrey")
                    continue
                panel.bar(x, value, bar, color=color, label=label if j == 0 else None)
                panel.text(x, value + 0.01, f"{value:.2f}", ha="center", va="bottom", fontsize=7, rotation=90)
        panel.set_xticks(range(len(CHART_GROUPS)), [label for _, _, label in CHART_GROUPS], fontsize=8)
        panel.set_ylim(0, 1.12)
        panel.set_title(f"answers on the {split} part ({context.groups_mode}): before and now")
        panel.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=len(series), fontsize=9)
        panel.grid(axis="y", alpha=0.3)
        panel.set_axisbelow(True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
