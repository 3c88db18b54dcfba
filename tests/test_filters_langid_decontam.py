"""Language ID with the real lid.176.ftz, and n-gram decontamination against benchmark files."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from filters.decontam import BenchmarkFile, Decontamination, DecontaminationConfig
from filters.langid import LanguageId, LanguageIdConfig, bundled_model_path
from filters.text import normalize


def record(instruction: str, response: str = "") -> dict:
    messages = [{"role": "user", "content": instruction}]
    if response:
        messages.append({"role": "assistant", "content": response})
    return {"id": f"{instruction}|{response}", "messages": messages}


@pytest.fixture(scope="module")
def english_only() -> LanguageId:
    return LanguageId(LanguageIdConfig())


def judge_one(filter_, rec):
    (verdict,) = filter_.judge([rec])
    return verdict


def test_default_model_is_the_bundled_lid_176_ftz(english_only):
    assert english_only.model_path == bundled_model_path()
    assert english_only.model_path.name == "lid.176.ftz" and english_only.model_path.stat().st_size > 900_000


def test_english_kept_and_annotated_even_with_newlines(english_only):
    rec = record("Summarize the following paragraph.\n\nThe meeting moved to Tuesday\nbecause of the storm.",
                 "The meeting was postponed to Tuesday due to a storm.")
    assert judge_one(english_only, rec) is None
    assert rec["lang"] == "en" and rec["lang_score"] >= 0.65


def test_other_language_dropped_with_its_code_and_score(english_only):
    rec = record("Décrivez la tour Eiffel en deux phrases.", "La tour Eiffel est un monument de fer à Paris.")
    verdict = judge_one(english_only, rec)
    assert verdict.reason == "lang_not_allowed"
    assert verdict.evidence["lang"] == "fr" and verdict.evidence["score"] > 0.65


def test_three_letter_language_codes_parse():
    cebuano = record("Ang Sugbo usa ka lalawigan sa Pilipinas nga nahimutang sa rehiyon sa Kabisay-an.")
    assert judge_one(LanguageId(LanguageIdConfig(allowed=["ceb"])), cebuano) is None
    assert cebuano["lang"] == "ceb"
    assert judge_one(LanguageId(LanguageIdConfig()), cebuano).evidence["lang"] == "ceb"


def test_low_score_dropped_and_near_miss_kept():
    gibberish = record("asdf qwer zxcv")  # fastText's top label is en, at about 0.11
    assert judge_one(LanguageId(LanguageIdConfig()), gibberish).reason == "lang_low_score"
    assert judge_one(LanguageId(LanguageIdConfig(min_score=0.1)), gibberish) is None


def test_empty_and_non_utf8_text(english_only):
    assert judge_one(english_only, record("")).reason == "lang_no_text"
    broken = b"Please translate this sentence about the caf\xe9 into simple English words.".decode(
        "utf-8", "surrogateescape")
    assert judge_one(english_only, record(broken)) is None
    assert judge_one(LanguageId(LanguageIdConfig(text="response")), record("Hello there, how are you?")).reason == "lang_no_text"


# ---------------------------------------------------------------- decontamination

QUESTION = ("Natalia sold clips to forty eight of her friends in April and then she sold half as many "
            "clips in May how many clips did she sell altogether")


@pytest.fixture
def benchmarks(tmp_path):
    """The same kind of benchmark in each supported format, with its own prompt column."""
    jsonl = tmp_path / "gsm8k.jsonl"
    jsonl.write_text(json.dumps({"question": QUESTION, "answer": "72"}) + "\n" + json.dumps({"question": None}) + "\n")
    as_json = tmp_path / "trivia.json"
    as_json.write_text(json.dumps([{"q": "Which river flows through the middle of the city of Vienna and on to the Black Sea"}]))
    parquet = tmp_path / "mmlu.parquet"
    pq.write_table(pa.table({"prompt": ["What is the derivative of x squared with respect to x in elementary calculus classes", "Short prompt here"]}), parquet)
    return [BenchmarkFile(path=str(jsonl), column="question"), BenchmarkFile(path=str(as_json), column="q", name="trivia_qa"),
            BenchmarkFile(path=str(parquet), column="prompt")]


def test_decontamination_drops_shared_13_grams_from_each_format(benchmarks):
    f = Decontamination(DecontaminationConfig(benchmarks=benchmarks))
    words = QUESTION.split()
    cases = [
        (record("Solve: " + " ".join(words[:13]) + "?", "Some answer."), "gsm8k", "instruction"),
        (record("Solve: " + " ".join(words[:12]) + "?", "Some answer."), None, None),  # 12 words: near miss
        (record("Tell me about rivers.", "Which river flows through the middle of the town of Vienna and on to the Black Sea?"),
         None, None),  # "city" changed: 8 words in a row at most
        (record("Tell me about rivers.", "Which RIVER flows through the middle of the city of Vienna, and on to the Black Sea?"),
         "trivia_qa", "response"),
        (record("What is the derivative of x squared with respect to x in elementary calculus classes?"), "mmlu", "instruction"),
        (record("Short prompt here."), "mmlu", "instruction"),  # shorter than 13 words: matched whole
        (record("A short prompt here."), None, None),
    ]
    kept, dropped = f([rec for rec, _, _ in cases])
    assert len(kept) + len(dropped) == len(cases)
    by_id = {r["id"]: r["_drop"]["evidence"] for r in dropped}
    for rec, benchmark, field in cases:
        if benchmark is None:
            assert rec["id"] not in by_id
        else:
            evidence = by_id[rec["id"]]
            assert (evidence["benchmark"], evidence["field"]) == (benchmark, field)
            assert evidence["ngram"] in normalize(rec["messages"][1 if field == "response" else 0]["content"])
    assert f.stats()["dropped"] == {"benchmark_overlap": 4}


def test_decontamination_ngram_is_configurable(benchmarks):
    f = Decontamination(DecontaminationConfig(benchmarks=benchmarks, ngram=8))
    (verdict,) = f.judge([record("Tell me: " + " ".join(QUESTION.split()[5:13]))])
    assert verdict.reason == "benchmark_overlap" and len(verdict.evidence["ngram"].split()) == 8


# Answers in fourteen languages (about 250-350 characters each), for language_id's max_chars check.
ANSWERS = {
    "fr": "La tour Eiffel a été construite pour l'Exposition universelle de 1889 à Paris. Elle mesure environ trois cents mètres et fut pendant quarante ans le plus haut monument du monde. Aujourd'hui, des millions de visiteurs montent chaque année à son sommet pour admirer la ville.",
    "de": "Die Berliner Mauer wurde im Jahr 1961 errichtet und teilte die Stadt fast drei Jahrzehnte lang in zwei Hälften. Im November 1989 öffneten sich die Grenzübergänge, und viele Menschen feierten gemeinsam auf der Straße. Heute erinnern nur noch wenige Abschnitte an die Teilung.",
    "es": "El río Amazonas atraviesa varios países de América del Sur y lleva más agua que cualquier otro río del planeta. Su cuenca alberga una enorme variedad de plantas y animales, muchos de los cuales todavía no han sido descritos por los científicos que estudian la selva.",
    "it": "La pizza margherita fu preparata per la prima volta a Napoli alla fine dell'Ottocento. I suoi colori, il rosso del pomodoro, il bianco della mozzarella e il verde del basilico, ricordano la bandiera italiana. Ancora oggi è una delle pizze più amate in tutto il mondo.",
    "pt": "O Brasil é o maior país da América do Sul e tem uma enorme diversidade cultural. A língua oficial é o português, e a capital é Brasília, uma cidade planejada inaugurada em 1960. O país é conhecido pelo futebol, pela música e pelas suas praias muito famosas.",
    "nl": "Nederland staat bekend om zijn molens, tulpen en fietsen. Een groot deel van het land ligt onder de zeespiegel en wordt beschermd door dijken en duinen. In de steden fietsen mensen elke dag naar hun werk, ook als het regent of hard waait langs de grachten.",
    "ru": "Москва является столицей России и одним из крупнейших городов Европы. В центре города находится Красная площадь и Кремль, где расположены древние соборы и дворцы. Каждый год миллионы туристов приезжают сюда, чтобы увидеть знаменитые музеи и театры.",
    "pl": "Kraków był przez wiele wieków stolicą Polski i do dziś zachwyca swoją architekturą. Na Wawelu stoi zamek królewski, a rynek główny jest jednym z największych placów średniowiecznej Europy. Miasto odwiedzają co roku miliony turystów z całego świata.",
    "tr": "İstanbul, Asya ile Avrupa arasında yer alan ve tarih boyunca birçok imparatorluğa başkentlik yapmış bir şehirdir. Boğaz'ın iki yakasında yaşayan insanlar her gün vapurla karşıdan karşıya geçer. Şehrin camileri ve çarşıları dünyaca ünlüdür.",
    "zh": "长城是中国古代最伟大的建筑工程之一，全长超过两万公里。它最初是为了抵御北方游牧民族的侵袭而修建的，历经多个朝代不断加固和扩建。如今，长城已经成为世界文化遗产，每年吸引大量游客前来参观。",
    "ja": "富士山は日本で最も高い山で、標高は三千七百七十六メートルです。夏になると多くの登山者が頂上を目指し、山頂から見るご来光はとても美しいと言われています。富士山は古くから信仰の対象であり、多くの絵画や詩にも描かれてきました。",
    "ar": "تعد القاهرة أكبر مدينة في العالم العربي وعاصمة جمهورية مصر العربية. يمر نهر النيل عبر المدينة، وتقع الأهرامات الشهيرة بالقرب منها في منطقة الجيزة. يزور ملايين السياح المدينة كل عام للتعرف على تاريخها العريق ومتاحفها الغنية.",
    "hi": "ताजमहल भारत के आगरा शहर में यमुना नदी के किनारे स्थित है। इसे मुगल बादशाह शाहजहाँ ने अपनी पत्नी मुमताज़ महल की याद में बनवाया था। सफेद संगमरमर से बना यह मकबरा दुनिया के सात अजूबों में गिना जाता है और हर साल लाखों पर्यटक इसे देखने आते हैं।",
    "ko": "서울은 대한민국의 수도이며 한강을 중심으로 발전한 대도시입니다. 이 도시에는 오래된 궁궐과 현대적인 고층 건물이 함께 어우러져 있습니다. 많은 사람들이 지하철을 이용해 출근하며, 밤에도 거리는 활기로 가득 차 있습니다.",
}


@pytest.mark.parametrize("lang", ANSWERS)
def test_other_languages_dropped_alone_and_after_a_long_english_prompt(english_only, lang):
    assert judge_one(english_only, record(ANSWERS[lang])).evidence["lang"] == lang
    # max_chars is shared between instruction and response, so a long English prompt cannot push
    # the answer out of the judged text. Chinese is the exception: written without spaces, its
    # ~150 judged characters are one "word" to fastText against ~25 English ones.
    if lang != "zh":
        long_prompt = "Tell me about this place in a few sentences, as a travel guide would. " * 30
        assert judge_one(english_only, record(long_prompt, ANSWERS[lang])) is not None
