"""The gold question set: load a JSONL file and validate every line.

A bad gold file would silently skew every metric, so each problem is reported with its line number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REQUIRED_FIELDS: dict[str, type] = {
    "id": str,
    "question": str,
    "answers": list,
    "evidence": list,
    "answerable": bool,
}
OPTIONAL_FIELDS: dict[str, type] = {"kind": str, "part": str, "lang": str, "style": str, "split": str}
# The kinds of eval/gold/qa.jsonl: what a question asks for (answerable) or why the book cannot answer it.
KINDS = ("fact", "number", "date", "definition", "list", "why/how", "comparison", "heading", "near-topic", "off-topic")
UNANSWERABLE_KINDS = ("near-topic", "off-topic")
# dev: what anything fitted or tuned may see; test: what figures are reported on.
SPLITS = ("dev", "test")
_TYPE_NAMES = {str: "문자열", list: "문자열 목록", bool: "true/false"}


class GoldFileError(ValueError):
    """The gold file is unreadable or malformed; the message names the file, the line and the problem.

    Raised instead of a traceback so the CLI can show it and exit with code 2.
    """

    def __init__(self, path: Path, line: int | None, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        where = f"{path} {line}행" if line is not None else str(path)
        super().__init__(f"골드 파일 오류 ({where}): {problem}")


@dataclass(frozen=True)
class GoldQuestion:
    """One gold question: any of `answers` is a correct answer, each `evidence` is an exact corpus substring.

    Unanswerable questions (the book does not cover them) have `answerable=False` and may have no answers.
    """

    id: str
    question: str
    answers: tuple[str, ...]
    evidence: tuple[str, ...]
    answerable: bool
    kind: str | None = None
    part: str | None = None
    line: int = 0
    # ko or en; book (the book's wording), paraphrase or colloquial; dev or test.
    lang: str | None = None
    style: str | None = None
    split: str | None = None


def parse_gold_line(raw: str, line: int, path: Path) -> GoldQuestion:
    """One validated gold question from one JSONL line (GoldFileError naming `line` otherwise).

    Checks JSON syntax, required fields and their types, and that an answerable question has answers and evidence.
    """
    try:
        record: Any = json.loads(raw)
    except json.JSONDecodeError as error:
        raise GoldFileError(path, line, f"JSON 형식이 잘못되었습니다 ({error.msg}, {error.colno}열)") from error
    if not isinstance(record, dict):
        raise GoldFileError(path, line, "한 줄은 JSON 객체({...})여야 합니다")
    if "answerable" in record and record["answerable"] is None:
        # What `bookqa feedback export` writes: a reader's 👎, not yet a gold question.
        raise GoldFileError(
            path,
            line,
            f"검토하지 않은 피드백 항목입니다 (id {record.get('id')}: answerable이 null). "
            "answers와 evidence를 확인해 채우고 answerable을 true/false로 정한 뒤 골드 파일로 쓰세요",
        )
    for name, expected in REQUIRED_FIELDS.items():
        if name not in record:
            raise GoldFileError(path, line, f"'{name}' 필드가 없습니다")
        _check_type(record, name, expected, path, line)
    for name, expected in OPTIONAL_FIELDS.items():
        if record.get(name) is not None:
            _check_type(record, name, expected, path, line)
    for name in ("answers", "evidence"):
        for position, item in enumerate(record[name], start=1):
            if not isinstance(item, str) or not item.strip():
                raise GoldFileError(path, line, f"'{name}'의 {position}번째 항목이 비어 있지 않은 문자열이 아닙니다")
    if record.get("split") is not None and record["split"] not in SPLITS:
        raise GoldFileError(path, line, f"'split'은 {'/'.join(SPLITS)} 중 하나여야 합니다 (받은 값: {record['split']})")
    if not record["id"].strip():
        raise GoldFileError(path, line, "'id'가 비어 있습니다")
    if not record["question"].strip():
        raise GoldFileError(path, line, f"질문('question')이 비어 있습니다 (id {record['id']})")
    if record["answerable"]:
        for name in ("answers", "evidence"):
            if not record[name]:
                raise GoldFileError(path, line, f"답할 수 있는 질문(id {record['id']})에 '{name}'가 비어 있습니다")
    return GoldQuestion(
        id=record["id"],
        question=record["question"],
        answers=tuple(record["answers"]),
        evidence=tuple(record["evidence"]),
        answerable=record["answerable"],
        kind=record.get("kind"),
        part=record.get("part"),
        line=line,
        lang=record.get("lang"),
        style=record.get("style"),
        split=record.get("split"),
    )


def _check_type(record: dict[str, Any], name: str, expected: type, path: Path, line: int) -> None:
    value = record[name]
    # bool is a subclass of int, never of str or list, so isinstance is exact for these types.
    if not isinstance(value, expected):
        raise GoldFileError(
            path, line, f"'{name}' 필드는 {_TYPE_NAMES[expected]}이어야 합니다 (받은 값: {json.dumps(value, ensure_ascii=False)[:60]})"
        )


def load_gold(path: Path) -> list[GoldQuestion]:
    """All questions of a gold JSONL file, validated; blank lines are skipped.

    Raises GoldFileError for an unreadable or empty file, a malformed line, or a repeated id.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise GoldFileError(path, None, "파일이 없습니다") from error
    except (OSError, UnicodeDecodeError) as error:
        raise GoldFileError(path, None, f"파일을 읽을 수 없습니다: {error}") from error
    questions: list[GoldQuestion] = []
    first_line: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        question = parse_gold_line(raw, number, path)
        if question.id in first_line:
            raise GoldFileError(path, number, f"id '{question.id}'가 중복됩니다 ({first_line[question.id]}행에 이미 있습니다)")
        first_line[question.id] = number
        questions.append(question)
    if not questions:
        raise GoldFileError(path, None, "질문이 하나도 없습니다")
    return questions
