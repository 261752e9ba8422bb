"""Answers that answer the question asked, or decline: answer types, fact spans, headings, the answer span,
near-topic declines, one decision for every caller, and an abstention model that refits to the committed one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from eval.fit_abstention import FIT_GOLD_FILES, data_sha256, dev_questions, fit_on_gold
from eval.gold import load_gold
from indexer.engine import SearchEngine
from indexer.facts import fact_spans, title_span
from indexer.korean import KoreanAnalyzer
from service.abstention import MODEL_PATH, AbstentionModel, AbstentionModelError, load_model
from service.answer import ABSTAIN_MESSAGE, Citation, topic_particle
from service.evidence import FEATURES, named_labels
from service.qa import QAService
from service.question import answer_type, question_language
from tests.test_cli import run
from ui.render import quote_html

GOLD = Path(__file__).resolve().parents[1] / "eval" / "gold" / "qa.jsonl"
BOOK = "digital-trend-2023.txt"


@pytest.fixture(scope="module")
def qa(engine: SearchEngine) -> QAService:
    return QAService(engine)


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("마이페이먼트는 언제부터 시행돼?", "date"),
        ("저자가 기자 일을 시작한 해는?", "date"),
        ("글쓴이가 기자로 일하기 시작한 것은 어느 해인가?", "date"),
        ("어느 해결책이 더 낫다고 해?", "other"),
        ("덴마크 중소기업의 인공지능 사용률은?", "percent"),
        ("구글클라우드가 맨디언트를 인수할 때 쓴 금액은?", "money"),
        # "얼마 한다" is what something costs; "얼마나 늘었나" is not.
        ("비트코인 한 개가 지금 얼마쯤 한다고 나와 있어?", "money"),
        ("매출이 얼마나 늘었나?", "number"),
        # A degree ("얼마나 감당할 수 있나", "how much risk") and a few of a list ("몇 개만") are not figures.
        ("자금이 넉넉지 않은 중소기업은 대기업에 비해 위험을 얼마나 감당할 수 있나?", "other"),
        ("Compared with big companies, how much risk can small firms afford to take?", "manner"),
        ("스마트 팩토리로 뭘 기대할 수 있대? 몇 개만 말해줘", "other"),
        ("2부에서 소개하는 트렌드는 모두 몇 개인가요?", "quantity"),
        ("저자가 일하는 신문사는 어디인가?", "organization"),
        ("혼합형 클라우드를 쓰는 대표적인 금융기관으로는 어디가 소개되었나?", "organization"),
        ("who's the author of this book? what's their name?", "person"),
        ("how much did the priciest NFT ever sell for?", "money"),
        ("What's the average salary of an AI specialist at a manufacturing firm?", "money"),
        ("Which OTT platforms does the book say are leading the OTT war?", "name"),
        # How a price is set is a how-question; ", where every coin …" is a relative clause.
        ("How is the price of an NFT set differently from Bitcoin, where every coin costs the same?", "manner"),
        ("미국 제조업체 조사에 참여한 기업은 몇 곳이야?", "quantity"),
        # "몇몇 곳" is some places: no count asked.
        ("AI 인재가 몇몇 곳에 몰려 있는 현상을 책은 뭐라고 표현해?", "other"),
        ("메타노믹스는 몇 번 이슈야", "ordinal"),
        ("하이어 본사는 중국 어느 도시에 있나요?", "place"),
        ("이더리움을 만든 사람은 누구인가요?", "person"),
        ("이 책 쓴 기자분 이름이 뭐예요?", "person"),
        ("1부 첫 번째 이슈에서 인공지능 전쟁 벌인다는 나라들 어디야?", "place"),
        ("클레이튼을 만든 회사는 어디야?", "organization"),
        # "어떤 회사" asks what kind of company ("금융 회사"), not which one.
        ("마이데이터 서비스는 어떤 회사들이 제공해?", "other"),
        ("NFT는 무엇의 약자인가?", "name"),
        ("마이데이터란 무엇인가?", "definition"),
        ("NFT를 왜 대체 불가능한 토큰이라고 불러?", "reason"),
        ("스마트 팩토리에선 불량품을 어떻게 잡아내나요?", "manner"),
        ("스스로 테크기업이라고 재정의하고 있다고 언급된 업종에는 어떤 것들이 있나요?", "other"),
        ("When is MyPayment likely to be implemented in earnest?", "date"),
        # "when it comes to" asks no date.
        ("What is a smart factory ultimately aiming for when it comes to how its machines work together?", "manner"),
        ("How many core digital technologies does the book cover?", "quantity"),
        ("What share of Danish SMEs used AI as of 2019?", "percent"),
        ("Where is Ground X headquartered?", "place"),
        ("Who founded Haier?", "person"),
        ("What is the author's name?", "person"),
        ("How big was the global cloud market in 2022, in dollars?", "money"),
        ("Which company developed the Klaytn blockchain platform?", "organization"),
        ("What does PaaS stand for?", "name"),
        ("What is the Big Blur phenomenon?", "definition"),
        ("Why is it hard to estimate the return on investment of AI projects?", "reason"),
    ],
)
def test_answer_type_from_the_question(question: str, expected: str) -> None:
    assert answer_type(question, question_language(question)) == expected


def test_language_of_a_question() -> None:
    assert question_language("What does IaaS stand for?") == "en"
    assert question_language("IaaS는 무엇을 제공해?") == "ko"
    assert question_language("NFT가 뭐야?") == "ko"


def test_fact_spans_find_numbers_dates_places_and_names(analyzer: KoreanAnalyzer) -> None:
    def spans(text: str) -> list[tuple[str, str]]:
        return [(f.kind, text[f.start : f.end]) for f in fact_spans(text, analyzer.tokens(text))]

    found = spans("미국 제조업체 중 연 매출 5억~100억 달러 기업 60곳을 기준으로 조사한 결과 응답자의 5%만이")
    assert ("place", "미국") in found and ("money", "5억~100억 달러") in found
    assert ("quantity", "60곳") in found and ("percent", "5%") in found
    assert ("date", "2013년") in spans("2013년 시작한 기자 생활 대부분을 경제 금융 산업 부서에서 뛰었다.")
    assert ("date", "내년") in spans("내년 경기 침체에 대비하기 위해 우리는 반드시 디지털 전략을 짜야만 한다.")
    assert ("quantity", "수천 개") in spans("불량품이 발견될 때까지 수천 개의 똑같은 불량품이 나와도")
    names = spans("국내의 경우 카카오의 블록체인 기술 계열사인 그라운드X가 자체 개발한 퍼블릭 블록체인 플랫폼")
    assert ("name", "그라운드X") in names and ("name", "카카오") in names
    assert ("name", "Non-Fungible Token") in spans("NFT(Non-Fungible Token)는 블록체인 기술을 활용해")
    plain = spans("스마트 팩토리는 기계끼리 대화를 함으로써 최적의 공정을 만들어내는 것이 목표다.")
    assert not [kind for kind, _ in plain if kind != "name"]  # no date, number or place in it
    line = "TREND 5 구글클라우드는 왜 54억 달러로 맨디언트를 인수했나"
    title = title_span(line)
    assert title is not None and line[title.start : title.end] == "구글클라우드는 왜 54억 달러로 맨디언트를 인수했나"


def test_index_stores_fact_spans_in_document_offsets(engine: SearchEngine) -> None:
    text = engine.document_text(BOOK)
    facts = [(f.kind, text[f.start : f.end]) for chunk in engine.chunks() for s in chunk.sentences for f in s.facts]
    assert ("money", "54억 달러") in facts and ("percent", "56%") in facts and ("date", "2019년") in facts
    for chunk in engine.chunks():
        for sentence in chunk.sentences:
            assert all(sentence.start <= f.start < f.end <= sentence.end for f in sentence.facts)


def _span(citation: Citation) -> str | None:
    if citation.answer_start is None or citation.answer_end is None:
        return None
    return citation.quote[citation.answer_start - citation.start : citation.answer_end - citation.start]


def test_answer_leads_with_the_asked_fact_and_marks_it(qa: QAService, engine: SearchEngine) -> None:
    result = qa.ask("덴마크 중소기업의 인공지능 사용률은?")
    assert not result.abstained and result.answer_type == "percent"
    marked = [_span(c) for c in result.citations if _span(c)]
    # The sentence gives three percentages; the one after 중소기업 answers.
    assert marked[0] == "5%"
    assert result.answer.startswith("5% — ")
    text = engine.document_text(BOOK)
    for c in result.citations:
        assert text[c.start : c.end] == c.quote
        if c.answer_start is not None:
            assert c.start <= c.answer_start < c.answer_end <= c.end


@pytest.mark.parametrize(
    ("question", "lead"),
    [
        ("독일 전체 기업 중 인공지능을 쓰는 곳은 몇 퍼센트야?", "6%"),  # the figure after 독일, not 덴마크's
        ("유럽 인공지능 전문인력의 절반 정도는 몇 개 나라에 분포해 있나?", "3개국"),  # 유럽의 경우 영국, 프랑스, 독일 3개국
        ("AI 쓸 계획조차 없다고 한 미국 제조사 비율이 얼마야?", "56%"),  # "56% 인공지능 활용계획조차 없다고"
    ],
)
def test_the_marked_figure_is_the_asked_places_and_words(qa: QAService, question: str, lead: str) -> None:
    result = qa.ask(question)
    assert not result.abstained and result.answer.startswith(f"{lead} — "), result.answer


def test_a_name_is_marked_only_where_the_question_points_at_it(qa: QAService) -> None:
    """"…기술을 뭐라고 해?" is answered by a sentence holding "IT 자원": IT is not what it is called, so no name is
    marked; nor is the gloss of the question's own word ("오픈 파이낸스(Open Finance)")."""
    for question, wrong in (
        ("인터넷으로 남의 컴퓨터 자원을 빌려 쓰는 기술을 뭐라고 해?", "IT"),
        ("마이페이먼트를 오픈 파이낸스의 무엇이라고 표현한 절이 있나요?", "Open Finance"),
    ):
        result = qa.ask(question)
        assert wrong not in [_span(c) for c in result.citations] and not result.answer.startswith(f"{wrong} — ")
    assert qa.ask("NFT는 무엇의 약자인가?").answer.startswith("Non-Fungible Token — ")


def test_a_heading_answers_with_exact_offsets(qa: QAService, engine: SearchEngine) -> None:
    """The amount is only in a title (the ToC and the chapter heading), never in the body."""
    result = qa.ask("구글클라우드가 맨디언트를 인수할 때 쓴 금액은?")
    assert not result.abstained
    assert result.answer.startswith("54억 달러")
    citation = next(c for c in result.citations if _span(c) == "54억 달러")
    assert "맨디언트를 인수했나" in citation.quote and "\n" not in citation.quote
    assert engine.document_text(BOOK)[citation.start : citation.end] == citation.quote
    assert engine.document_text(BOOK)[citation.answer_start : citation.answer_end] == "54억 달러"


@pytest.mark.parametrize("question", ["What does IaaS stand for?", "IaaS는 무엇의 약자야?"])
def test_an_acronym_question_quotes_where_the_book_spells_it_out(qa: QAService, question: str) -> None:
    """`IaaS는 CPU, 메모리 등…` describes IaaS; only `IaaS(Infrastructure as a Service)` says what it stands for."""
    result = qa.ask(question)
    assert not result.abstained
    assert result.answer.startswith("Infrastructure as a Service — ")
    assert "IaaS(Infrastructure as a Service)" in result.citations[0].quote


def test_an_expansion_written_inside_the_brackets_counts(qa: QAService) -> None:
    """The book writes `사이버물리시스템(CPS, Cyber Physical System)`: CPS spelled out after a comma."""
    result = qa.ask("What does CPS stand for in a smart factory?")
    assert not result.abstained
    assert result.answer.startswith("Cyber Physical System — ")
    assert "(CPS, Cyber Physical System)" in result.citations[0].quote


def test_an_expansion_asked_is_missing_from_a_title_that_only_names_the_acronym(qa: QAService) -> None:
    """The book names CBDC only in a contents line; asked what it stands for, the quote must spell it out."""
    assert qa.evidence("What does the abbreviation CBDC stand for?").features["type_missing"] == 1.0
    declined = qa.ask("목차에 나오는 CBDC는 무엇의 줄임말인가요?")
    assert declined.abstained
    assert "‘CBDC’의 풀네임은 나오지 않습니다" in declined.answer
    assert qa.evidence("What does IaaS stand for?").features["type_missing"] == 0.0
    # `사이버물리시스템(CPS, Cyber Physical System)` spells CPS out after a comma.
    assert qa.evidence("What does CPS stand for in a smart factory?").features["type_missing"] == 0.0


def test_a_label_the_question_names_picks_its_line(qa: QAService) -> None:
    """"ISSUE 8" named: its contents line, not ISSUE 1's, whose words (인공지능, 기술) are closer to the question's."""
    result = qa.ask("1부의 ISSUE 8은 어떤 기술을 다루나?")
    assert not result.abstained
    assert result.citations[0].quote.startswith("ISSUE 8_디지털 트윈")


def test_a_label_named_by_its_place_is_read_as_its_number(qa: QAService) -> None:
    """"the first 2023 trend" is TREND 1, "첫 번째 파트" the 1부 line and "the book's introduction" 들어가며; a part
    that only says where to look ("In part 2, which trend …") is no label, and "the first to issue" names none."""
    assert named_labels("According to the first 2023 trend title, what?") == [("trend", 1)]
    assert named_labels("책의 첫 번째 파트는 어느 해를 되돌아보나?") == [("part", 1)]
    assert named_labels("Which country was the first to issue a CBDC?") == []
    answer = qa.ask("According to the first 2023 trend title, doing what alone makes money pile up in your bank account?")
    assert not answer.abstained and answer.citations[0].quote.startswith("TREND 1")
    part = qa.ask("책의 앞쪽 절반, 즉 첫 번째 파트는 어느 해를 되돌아보는 내용인가?")
    assert not part.abstained and "디지털 트렌드 2022 리뷰" in part.answer
    trend = qa.ask("In part 2, which trend number covers digital healthcare?")
    assert "TREND 9" in trend.answer
    # The introduction's title asked by another name is its "들어가며_" line; what it says is not a title.
    assert named_labels("What is the title of the book's introduction?") == [("section", "들어가며")]
    assert named_labels("서문은 기업에게 무엇을 하라고 하나요?") == []
    introduction = qa.ask("What is the title of the book's introduction?")
    assert introduction.citations and introduction.citations[0].quote.startswith("들어가며")


def test_the_next_sentence_joins_a_question_the_book_asks(qa: QAService) -> None:
    """"이들의 공통점은 뭘까?" introduces; the next sentence of the paragraph answers."""
    result = qa.ask("지메일, 넷플릭스, 줌 비디오의 공통점은?")
    assert not result.abstained
    assert "공통점은 뭘까?" in result.answer and "애플리케이션 서비스" in result.answer
    assert len(result.citations) >= 2


def test_near_topic_declines_with_what_the_book_does_say(qa: QAService, engine: SearchEngine) -> None:
    result = qa.ask("맨디언트 본사는 어디에 있어?")
    assert result.abstained and result.answer_type == "place"
    assert result.answer.startswith("책은 ‘맨디언트’에 대해서는 다루지만, ‘본사’의 장소는 나오지 않습니다.")
    assert result.citations and all("맨디언트" in c.quote for c in result.citations)
    for c in result.citations:
        assert engine.document_text(c.doc)[c.start : c.end] == c.quote
        assert f"[{c.id}]" in result.answer
    # How the fact is asked ("최소 얼마나") is not what is missing: 자본금 is.
    capital = qa.ask("종합지급결제업 인가를 받으려면 자본금이 최소 얼마나 있어야 하나요?")
    assert capital.abstained and "‘자본금’의 금액은 나오지 않습니다" in capital.answer


def test_off_topic_declines_without_citations(qa: QAService) -> None:
    result = qa.ask("라면을 맛있게 끓이는 방법 알려줘")
    assert result.abstained and result.answer == ABSTAIN_MESSAGE and result.citations == []


def test_topic_particle() -> None:
    assert [topic_particle(w) for w in ("그 시기", "그 금액", "‘본사’의 장소", "질문하신 내용", "SaaS")] == [
        "는",
        "은",
        "는",
        "은",
        "는",
    ]


def test_every_caller_gets_the_same_decision(qa: QAService, book_settings) -> None:
    """`/v1/ask`, `/v1/ask/stream`, the chat and `bookqa ask` all answer through QAService.ask."""
    from fastapi.testclient import TestClient

    from service.api import create_api
    from ui.app import Conversation, make_respond

    question = "맨디언트 본사는 어디에 있어?"
    expected = qa.ask(question)
    with TestClient(create_api(qa=qa)) as client:
        body = client.post("/v1/ask", json={"question": question}).json()
        with client.stream("POST", "/v1/ask/stream", json={"question": question}) as response:
            done = json.loads(response.read().decode().strip().split("\n\n")[-1].split("data: ", 1)[1])
    assert (body["abstained"], body["answer"], body["answer_type"]) == (True, expected.answer, "place")
    assert (done["abstained"], done["answer"]) == (True, expected.answer)
    assert all({"answer_start", "answer_end"} <= set(c) for c in body["citations"])
    *_, (_, chat, conversation, _) = make_respond(lambda: qa)(question, [], Conversation(), 5, "hybrid")
    assert conversation.history[-1].content == expected.answer and conversation.turns[-1].abstained
    cli = run(book_settings, "ask", question, "--json")
    assert cli.returncode == 0, cli.stderr
    printed = json.loads(cli.stdout)
    assert (printed["abstained"], printed["answer"]) == (True, expected.answer)


def test_the_chat_highlights_the_answer_inside_the_quote() -> None:
    citation = Citation(1, "b#1", BOOK, "", 100, 120, "덴마크 <b>기업</b>의 5%만이", answer_start=115, answer_end=117)
    rendered = quote_html(citation)
    assert '<strong class="bq-answer">5%</strong>' in rendered and "&lt;b&gt;" in rendered
    assert quote_html(Citation(1, "b#1", BOOK, "", 0, 3, "abc")) == "abc"


def test_committed_model_is_usable_and_a_broken_one_is_refused(tmp_path: Path) -> None:
    model = load_model()
    assert set(model.features) <= set(FEATURES) and 0 < model.threshold < 1
    assert model.fitted_on["split"] == "dev" and model.fitted_on["questions"] > 100
    broken = tmp_path / "model.json"
    broken.write_text(json.dumps({**model.to_json(), "features": ["no-such-signal", *model.features[1:]]}))
    with pytest.raises(AbstentionModelError, match="fit-abstention"):
        load_model(broken)
    with pytest.raises(AbstentionModelError, match="fit-abstention"):
        load_model(tmp_path / "missing.json")


def test_refitting_on_dev_gives_the_committed_model(qa: QAService) -> None:
    """The committed parameters are what the dev part gives; within a tolerance, since another embedding backend
    (OpenVINO) moves cosines by ~1e-5."""
    gold = [q for path in FIT_GOLD_FILES for q in load_gold(GOLD.parents[2] / path)]
    committed = AbstentionModel.from_json(json.loads(MODEL_PATH.read_text(encoding="utf-8")))
    assert committed.fitted_on["data_sha256"] == data_sha256(dev_questions(gold))
    assert committed.fitted_on["gold"] == "eval/gold/qa.jsonl + eval/gold/train.jsonl"
    refit = fit_on_gold(qa, gold, FIT_GOLD_FILES)
    assert refit.fitted_on["data_sha256"] == committed.fitted_on["data_sha256"]
    assert refit.features == committed.features
    assert np.allclose(refit.coef, committed.coef, atol=0.05)
    assert np.allclose(refit.mean, committed.mean, atol=0.01) and np.allclose(refit.scale, committed.scale, atol=0.01)
    assert abs(refit.intercept - committed.intercept) < 0.05
    assert abs(refit.threshold - committed.threshold) <= 0.02
    assert refit.off_topic_gate is not None and committed.off_topic_gate is not None
    assert refit.off_topic_gate.off_topic == committed.off_topic_gate.off_topic
    assert refit.off_topic_gate.answerable == committed.off_topic_gate.answerable
    assert abs(refit.off_topic_gate.threshold - committed.off_topic_gate.threshold) < 0.002


def test_a_new_topic_in_a_conversation_is_judged_on_its_own_words(qa: QAService) -> None:
    from service.qa import Turn

    history = [Turn("user", "마이데이터가 뭐야?"), Turn("assistant", "마이데이터는 … 사업이다. [1]")]
    switched = qa.ask("김치찌개 맛있게 끓이는 법 알려줘", history=history)
    assert switched.abstained and switched.citations == []
    follow_up = qa.ask("그럼 그건 누가 제공해?", history=history)
    assert any("마이데이터" in p.text for p in follow_up.passages[:2])


@pytest.mark.parametrize(
    "question", ["Recommend a good pasta recipe for dinner.", "What time does the sun set in Paris in June?", "오늘 저녁 메뉴로 뭘 먹으면 좋을까?"]
)
def test_the_off_topic_gate_declines_what_looks_like_the_dev_parts_off_topic_questions(
    qa: QAService, question: str
) -> None:
    """None of these is in the gold set; each is nearer an off-topic dev question than any answerable one."""
    gate = qa.answerer.model.off_topic_gate
    assert gate is not None
    assert gate.declines(qa.answerer.off_topic_likeness(question, question))
    result = qa.ask(question)
    assert result.abstained and result.citations == [] and result.answer == ABSTAIN_MESSAGE


def test_the_off_topic_gate_lets_the_books_questions_through(qa: QAService) -> None:
    gate = qa.answerer.model.off_topic_gate
    assert gate is not None
    for question in ("마이데이터가 뭐야?", "What does IaaS stand for?", "스마트 팩토리를 도입하면 뭐가 좋아?"):
        assert not gate.declines(qa.answerer.off_topic_likeness(question, question)), question
        assert not qa.ask(question).abstained, question


def test_a_reference_question_is_not_its_own_neighbour_and_vectors_are_cached(engine: SearchEngine, tmp_path: Path) -> None:
    from service.answer import model_key
    from service.neighbours import ReferenceQuestions

    calls: list[int] = []

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        return engine.embedder.encode_queries(texts)

    off_topic, answerable = ["오늘 서울 날씨 어때?", "라면 끓이는 법 알려줘"], ["마이데이터란 무엇인가?", "NFT는 무엇의 약자인가?"]
    references = ReferenceQuestions(off_topic, answerable, encode, tmp_path, model_key(engine))
    assert calls == [4]
    vector = engine.embed_query("오늘 서울 날씨 어때?")[0]
    # Against itself the question would look off-topic by construction; judged without itself, by the other one.
    assert references.likeness(vector) > references.likeness(vector, own_texts=["오늘 서울 날씨 어때?"])
    assert references.likeness(engine.embed_query("마이데이터가 뭐야?")[0]) < 0 < references.likeness(vector)
    # The second build reads the cache: no embedding, the same answer.
    again = ReferenceQuestions(off_topic, answerable, encode, tmp_path, model_key(engine))
    assert calls == [4] and again.likeness(vector) == pytest.approx(references.likeness(vector))
    # A damaged cache file is embedded again and rewritten, not trusted.
    (cached,) = (tmp_path / "reference-questions").glob("*.npy")
    cached.write_bytes(b"not a numpy file")
    repaired = ReferenceQuestions(off_topic, answerable, encode, tmp_path, model_key(engine))
    assert calls == [4, 4] and repaired.likeness(vector) == pytest.approx(references.likeness(vector), abs=1e-5)
    assert np.load(cached).shape == (4, engine.embedder.dim)
    # Another model's vectors are never reused for this one.
    ReferenceQuestions(off_topic, answerable, encode, tmp_path, "another-model")
    assert calls == [4, 4, 4]


def test_a_gate_without_reference_questions_is_refused(tmp_path: Path) -> None:
    payload = json.loads(MODEL_PATH.read_text(encoding="utf-8"))
    payload["off_topic_gate"]["off_topic"] = []
    broken = tmp_path / "model.json"
    broken.write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(AbstentionModelError, match="fit-abstention"):
        load_model(broken)


def test_an_organisation_is_a_name_the_sentence_calls_one(qa: QAService) -> None:
    """"하이브리드(hybrid)" and "OS" are names but not companies: a which-company question they would answer is declined."""
    answered = qa.ask("클레이튼을 만든 회사는 어디야?")
    assert not answered.abstained and "그라운드X" in answered.answer
    for question in ("하이브리드 클라우드를 쓰는 기업 사례로는 어디가 있나요?", "SaaS 시장에서 매출이 가장 큰 기업은 어디인가요?"):
        evidence = qa.evidence(question)
        assert evidence.frame.answer_type == "organization" and evidence.features["type_missing"] == 1.0, question
        assert qa.ask(question).abstained, question


def test_a_number_the_quote_does_not_hold_and_words_about_the_book_itself(qa: QAService) -> None:
    """"2024년" is not the book's 2023: the quote misses the question's number. "제목", "목차", "저자" are not in
    the book's text but are about the book: they do not make a question look off-topic."""
    assert qa.evidence("2024년 디지털 트렌드 전망은 어떻게 되나요?").features["number_missing"] == 1.0
    assert qa.evidence("2023년 디지털 트렌드 전망은 어떻게 되나요?").features["number_missing"] == 0.0
    # A contents line is listed under its part: "1부 … ISSUE 9" finds its 1 in "1부 디지털 트렌드 2022 리뷰".
    in_part_one = qa.evidence("In Part 1, which three digital trends does ISSUE 9 on big tech say deserve the most attention?")
    assert in_part_one.quote[0].sentence.text.startswith("ISSUE 9") and in_part_one.features["number_missing"] == 0.0
    about_the_book = qa.evidence("목차에서 디지털 노마드를 어떤 사람들로 소개하나요?").features
    assert about_the_book["noun_book_coverage"] == 1.0 and about_the_book["book_coverage"] == 1.0
    assert qa.evidence("날씨에서 디지털 노마드를 어떤 사람들로 소개하나요?").features["noun_book_coverage"] < 1.0


def test_a_decision_fitted_for_another_model_is_flagged(engine: SearchEngine, caplog: pytest.LogCaptureFixture) -> None:
    from dataclasses import replace

    from service.answer import warn_if_fitted_for_another_model

    model = load_model()
    assert not warn_if_fitted_for_another_model(model, engine)
    other = replace(model, fitted_on={**model.fitted_on, "model": "another-embedding-model"})
    with caplog.at_level("WARNING"):
        assert warn_if_fitted_for_another_model(other, engine)
    assert "fit-abstention" in caplog.text and "another-embedding-model" in caplog.text


def test_a_question_asking_what_something_is_likened_to_quotes_the_comparison(
    qa: QAService, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.evidence as evidence

    question = "클라우드 요금 방식은 무엇에 비유되나요?"
    answer = qa.ask(question)
    assert not answer.abstained and "전기, 수도" in answer.answer
    monkeypatch.setattr(evidence, "SIMILE_WEIGHT", 0.0)
    assert "전기, 수도" not in qa.ask(question).answer


def test_a_question_asking_what_a_description_is_called_prefers_a_defining_sentence(
    qa: QAService, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.evidence as evidence

    question = "프로그램 만드는 도구와 운영체제까지 빌려주는 클라우드 종류는?"
    assert "PaaS는" in qa.ask(question).answer
    monkeypatch.setattr(evidence, "TERM_WEIGHT", 0.0)
    assert "PaaS는" not in qa.ask(question).answer


def test_near_words_count_for_a_question_in_the_readers_own_words(
    qa: QAService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """"닮은 사업자를 규정한" is the book's "정의된 … 와 유사하다": Kiwi's near words pick that sentence."""
    import service.evidence as evidence

    assert evidence.near_word_share({"규정", "닮"}, {"정의", "유사"}, {"규정": {"정의": 0.6}, "닮": {}}) == 0.3
    assert evidence.near_word_share({"규정"}, {"규정"}, {"규정": {"정의": 0.6}}) == 0.0

    question = "유럽에서 마이페이먼트와 닮은 사업자를 규정한 규칙은?"
    assert "PSD2" in qa.evidence(question).candidates[0].sentence.text
    monkeypatch.setattr(evidence, "NEAR_WORD_WEIGHT", 0.0)
    assert "PSD2" not in qa.evidence(question).candidates[0].sentence.text


def test_a_why_question_quotes_the_sentence_that_explains(qa: QAService, monkeypatch: pytest.MonkeyPatch) -> None:
    """The best sentence says the cloud was a chance for start-ups; the reason (its cost) is the next one."""
    import service.evidence as evidence

    question = "왜 클라우드가 초창기 스타트업에게 큰 기회로 작용했나요?"
    answer = qa.ask(question)
    assert not answer.abstained and "비용적으로 큰 부담" in answer.answer and len(answer.citations) >= 2
    monkeypatch.setattr(evidence, "EXPLAINED_BY_FOLLOWER", frozenset())
    assert "비용적으로 큰 부담" not in qa.ask(question).answer


def test_a_question_asking_for_the_month_is_not_answered_by_a_year(qa: QAService) -> None:
    """The book says 마이데이터 policy is pushed toward 2023, never in which month: a year is not the asked date."""
    with_month = qa.evidence("금융 마이데이터 서비스는 몇 년 몇 월에 본격 시행됐나요?")
    assert with_month.features["type_missing"] == 1.0
    year_only = qa.evidence("금융 마이데이터 서비스는 몇 년에 본격 시행됐나요?")
    assert year_only.frame.answer_type == "date" and year_only.features["type_missing"] == 0.0


def test_another_countrys_figure_does_not_answer(qa: QAService) -> None:
    """The book gives AI adoption for 덴마크, 독일 and 미국 firms, never for Korea's: 한국 (우리나라, Korean) asked and
    another country quoted is a missing answer; the country the book names, in either language, is not."""
    for question in (
        "한국 기업의 인공지능 도입률은 몇 퍼센트인가요?",
        "우리나라 중소기업 AI 도입률은 몇 퍼센트야?",
        # Kiwi reads 우리나라 as 우리 + 나라: the place is found as written.
        "우리나라 기업은 AI 쓰는 데가 몇 퍼센트래?",
    ):
        evidence = qa.evidence(question)
        assert evidence.frame.answer_type == "percent" and evidence.features["type_missing"] == 1.0, question
    for question in ("덴마크 기업의 인공지능 도입률은 몇 퍼센트인가요?", "What share of German companies use AI?"):
        assert qa.evidence(question).features["type_missing"] == 0.0, question


def test_a_number_that_places_does_not_count(qa: QAService) -> None:
    """"4차 산업혁명" and "1부" are positions, not counts: they do not answer "how many" (the book never says how
    many smart factories Korea plans), while a question asking in that unit ("몇 차") still takes it."""
    question = "How many smart factories does the Korean government aim to have rolled out?"
    evidence = qa.evidence(question)
    assert evidence.frame.answer_type == "quantity" and evidence.features["type_missing"] == 1.0
    assert not qa.ask(question).answer.startswith("4차")
    asked_in_its_unit = qa.ask("스마트 팩토리는 몇 차 산업혁명의 생산설비인가요?")
    assert not asked_in_its_unit.abstained and asked_in_its_unit.answer.startswith("4차")


def test_a_count_answers_only_in_the_asked_counter(qa: QAService) -> None:
    """The book says half of Europe's AI specialists work in 3개국 (영국, 프랑스, 독일), never how many work in 영국: a
    count of countries does not answer "몇 명", and "1개당 가격" (a price per coin) does not answer how many coins;
    the same count asked in its own counter, or as "몇 개 나라" or "how many companies", does."""
    for question in ("영국에 있는 인공지능 전문 인력은 몇 명이나 돼?", "비트코인은 총 몇 개까지 발행될 수 있나요?"):
        evidence = qa.evidence(question)
        assert evidence.frame.answer_type == "quantity" and evidence.features["type_missing"] == 1.0, question
    for question in (
        "유럽 인공지능 전문인력의 절반 정도는 몇 개 나라에 분포해 있나?",
        "How many US manufacturers were covered by the survey on AI strategies?",
    ):
        evidence = qa.evidence(question)
        assert evidence.frame.counters and evidence.features["type_missing"] == 0.0, question
    assert qa.ask("미국 제조업체 AI 조사, 몇 개 회사 대상으로 한 거야?").answer.startswith("60곳")


def test_a_question_naming_a_part_of_the_book_is_about_the_book(qa: QAService) -> None:
    """"1부의 제목은?" and "들어가며 장의 제목은?" have no other noun (제목 asks): the part they name is theirs, and it
    is the book's, as a question about 웹 3.0 (a word the book never uses) is not."""
    assert qa.evidence("1부의 제목은 무엇인가요?").frame.nouns == ("1부",)
    assert qa.evidence("들어가며 장의 제목은?").frame.nouns == ("들어가며",)
    for question in ("1부의 제목은 무엇인가요?", "들어가며 장의 제목은?", "2부 제목 알려줘"):
        assert qa.evidence(question).features["noun_book_coverage"] == 1.0, question
    assert qa.evidence("회사에 들어가며 느낀 점은?").frame.nouns == ("회사",)
    assert qa.evidence("웹 3.0은 웹 2.0과 무엇이 다른가요?").features["noun_book_coverage"] == 0.0
    answer = qa.ask("1부의 제목은 무엇인가요?")
    assert not answer.abstained and "디지털 트렌드 2022 리뷰" in answer.answer


def test_a_comparison_quotes_each_side(qa: QAService) -> None:
    """"퍼블릭 클라우드와 프라이빗 클라우드의 차이는?" is best matched by the sentence naming both types; the answer
    also quotes what the book says of a compared side near enough to it ("프라이빗은 … 제한하는 방식으로"), which
    the best sentence alone left out. "다른 업종보다" compares nothing."""
    answer = qa.ask("퍼블릭 클라우드와 프라이빗 클라우드의 차이는?")
    assert not answer.abstained
    quotes = [citation.quote for citation in answer.citations]
    assert any(q.startswith("프라이빗은") for q in quotes), quotes
    assert len(quotes) <= 3
    single = qa.ask("공장에 AI를 들일 때 다른 업종보다 정밀함이 훨씬 중요한 까닭은 뭔가요?")
    assert len(single.citations) <= 2


def test_a_question_about_the_contents_quotes_a_contents_line(qa: QAService) -> None:
    """"…목차에 적혀 있나요?" asks what a title says: the contents line ("TREND 6 OTT 전쟁의 시작, 게임과 웹툰까지
    잡아야 산다") is quoted rather than a body sentence about streaming."""
    answer = qa.ask("동영상 스트리밍 경쟁에서 살아남으려면 영상 말고 어떤 콘텐츠까지 손에 넣어야 한다고 목차에 적혀 있나요?")
    assert not answer.abstained and "게임과 웹툰" in answer.answer


def test_a_change_asked_is_not_answered_by_one_moments_figure(qa: QAService) -> None:
    """The book gives 덴마크's AI use "2019년 기준", never how it grew: "얼마나 늘었나" quoted with that figure is a
    missing answer; the same figure asked for as such is not."""
    assert qa.evidence("덴마크 기업의 AI 사용률은 2019년 이후 얼마나 늘었나?").features["type_missing"] == 1.0
    assert qa.evidence("2019년 덴마크 기업의 AI 사용률은 몇 퍼센트인가요?").features["type_missing"] == 0.0


def test_the_dated_sentence_must_be_about_the_question(qa: QAService) -> None:
    """"오픈뱅킹 시스템은 언제 도입되었나?" finds 2023년 in a sentence about 마이페이먼트 and 종합지급결제업: the
    sentence holding the date covers little of the question, unlike the one that answers "…언제 본격적으로 시행할
    가능성이 큰가?"; questions that ask for no figure, and English ones, are not judged by it."""

    def coverage(question: str) -> float:
        return qa.evidence(question).features["fact_sentence_coverage"]

    assert coverage("오픈뱅킹 시스템은 언제 도입되었나?") < 0.5
    assert coverage("마이페이먼트 산업과 종합지급결제업은 언제 본격적으로 시행할 가능성이 큰가?") == 1.0
    assert coverage("마이데이터가 뭐야?") == coverage("When is MyPayment likely to be implemented in earnest?") == 1.0


def test_a_superlative_asked_needs_a_quote_that_singles_one_out(qa: QAService) -> None:
    """"가입자를 가장 많이 모은 회사" is not answered by a sentence listing the companies that offer 마이데이터."""
    assert qa.evidence("마이데이터 시장에서 가입자를 가장 많이 모은 회사는 어디인가요?").features["type_missing"] == 1.0
    assert qa.evidence("마이데이터 서비스를 제공하는 회사는 어디인가요?").features["type_missing"] == 0.0


def test_a_figure_is_the_questions_only_when_its_words_lead_up_to_it(qa: QAService) -> None:
    """덴마크's 5% of 중소기업 is led up to by a question about 덴마크 중소기업 more than by one about 한국 기업 (only
    "기업의 24%" shares a word); English words never occur in the book, so they count as leading up."""
    danish = qa.evidence("덴마크 중소기업의 인공지능 사용률은 몇 퍼센트야?").features["fact_context"]
    korean = qa.evidence("한국 기업의 인공지능 도입률은 몇 퍼센트인가요?").features["fact_context"]
    assert danish > korean > 0.0
    assert qa.evidence("마이데이터가 뭐야?").features["fact_context"] == 1.0
    assert qa.evidence("What share of Danish SMEs used AI as of 2019?").features["fact_context"] == 1.0
