"""Optional generative answers through any OpenAI-compatible chat endpoint (official `openai` client).

The model sees only the retrieved passages, numbered, and must cite them as `[n]`; markers that
point at no passage are dropped afterwards, so a citation can never invent a source.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

from indexer.retrieval import Passage

SYSTEM_PROMPT = (
    "당신은 책 『디지털 트렌드 2023』에 대한 질문에 답하는 도우미입니다. "
    "아래에 번호가 붙은 책의 발췌문만 근거로 한국어로 짧게(1~3문장) 답하세요. "
    "각 문장 끝에 근거가 된 발췌문의 번호를 [1]처럼 붙이세요. 발췌문에 없는 번호는 쓰지 마세요. "
    "발췌문에 답이 없으면 정확히 '책에서 찾을 수 없습니다.'라고만 답하세요."
)
NOT_FOUND_REPLY = "책에서 찾을 수 없습니다"
_MARKER = re.compile(r"\[(\d{1,3})\]")


class LLMError(RuntimeError):
    """The endpoint failed, timed out or returned nothing usable."""


def build_messages(question: str, passages: list[Passage], history: list[dict[str, str]]) -> list[dict[str, str]]:
    """Chat messages: instructions, prior turns, then the numbered passages and the question."""
    excerpts = "\n\n".join(
        f"[{number}] ({passage.section or passage.doc})\n{passage.text}" for number, passage in enumerate(passages, 1)
    )
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    messages += [{"role": turn["role"], "content": turn["content"]} for turn in history[-6:]]
    messages.append({"role": "user", "content": f"발췌문:\n{excerpts}\n\n질문: {question}"})
    return messages


def clean_markers(text: str, n_passages: int) -> tuple[str, list[int]]:
    """Drop markers outside 1..n_passages; return the text and the valid markers in order of use."""
    used: list[int] = []

    def keep(match: re.Match[str]) -> str:
        number = int(match.group(1))
        if 1 <= number <= n_passages:
            if number not in used:
                used.append(number)
            return match.group(0)
        return ""

    cleaned = _MARKER.sub(keep, text)
    cleaned = re.sub(r"[ \t]{2,}", " ", cleaned).strip()
    return cleaned, used


class LLMAnswerer:
    """Generates an answer from passages with an OpenAI-compatible chat model."""

    def __init__(self, base_url: str, model: str, api_key: str, timeout: float) -> None:
        from openai import OpenAI

        self.model = model
        self.timeout = timeout
        # No retries: on failure the user gets the extractive answer at once instead of waiting.
        self.client = OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)

    def stream(self, question: str, passages: list[Passage], history: list[dict[str, str]]) -> Iterator[str]:
        """The model's answer as it is generated, piece by piece (markers not yet checked).

        Raises LLMError on any failure, before or during the stream, and when the whole answer
        takes longer than the timeout or is empty.
        """
        import openai

        deadline = time.monotonic() + self.timeout
        produced = False
        try:
            stream = self.client.chat.completions.create(
                model=self.model, messages=build_messages(question, passages, history), temperature=0, stream=True
            )
            with stream:
                for chunk in stream:
                    if time.monotonic() > deadline:
                        raise LLMError("LLM 응답 시간이 초과되었습니다")
                    piece = chunk.choices[0].delta.content if chunk.choices and chunk.choices[0].delta else None
                    if piece:
                        produced = produced or bool(piece.strip())
                        yield piece
        except openai.APITimeoutError as error:
            raise LLMError("LLM 응답 시간이 초과되었습니다") from error
        except openai.OpenAIError as error:
            raise LLMError(f"LLM 호출 실패: {error}") from error
        if not produced:
            raise LLMError("LLM이 빈 답을 돌려주었습니다")

    def generate(self, question: str, passages: list[Passage], history: list[dict[str, str]]) -> str:
        """The model's whole answer text (markers not yet checked); raises LLMError on any failure."""
        return "".join(self.stream(question, passages, history)).strip()
