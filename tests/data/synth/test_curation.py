"""What curation keeps and drops: grounding by content words, near duplicates, paraphrases' distance."""

from __future__ import annotations

from tunehouse.data.synth.curation import NearDuplicates, grounding_problem, paraphrase_problem, similarity, support

PASSAGE = (
    "In 1994 Brackett founded the Saltmarsh Institute, a research center for coastal wetlands in Portland, "
    "Maine. Her book The Quiet Tide won the Harlow Prize in 2002."
)


def test_an_answer_is_grounded_when_its_content_words_are_in_the_passage() -> None:
    assert support("Brackett founded the Saltmarsh Institute in 1994.", PASSAGE) == 1.0
    assert grounding_problem("Which prize did The Quiet Tide win?", "It won the Harlow Prize.", PASSAGE, 0.6) is None
    invented = "Brackett won a Nobel medal in Stockholm for chemistry."
    assert support(invented, PASSAGE) == 2 / 6  # brackett and won; not nobel, medal, stockholm, chemistry
    assert grounding_problem("What did Brackett win?", invented, PASSAGE, 0.6) == "answer not grounded in its passage"
    assert grounding_problem("Who?", "It is.", PASSAGE, 0.6) == "answer says nothing"
    wrong_year = grounding_problem(
        "When was the institute founded?", "She founded the Saltmarsh Institute in 1997.", PASSAGE, 0.6
    )
    assert wrong_year == "answer has a number not in its passage"  # 3 of its 4 content words are in the passage
    off_topic = grounding_problem("What is the boiling point of mercury?", "The Saltmarsh Institute.", PASSAGE, 0.6)
    assert off_topic == "question not about its passage"


def test_near_duplicates_are_caught_and_distinct_pairs_kept() -> None:
    seen = NearDuplicates(threshold=0.8)
    assert not seen.seen("1", "When was the Saltmarsh Institute founded? It was founded in 1994.")
    assert seen.seen("2", "When was the Saltmarsh Institute founded?? It was founded in 1994")
    assert not seen.seen("3", "Which prize did The Quiet Tide win? It won the Harlow Prize in 2002.")
    many = NearDuplicates(threshold=0.8)
    assert (
        sum(many.seen(str(i), f"How many locks are on canal number {i}? Canal {i} has {i} locks.") for i in range(200))
        == 0
    )


def test_paraphrases_identical_repeated_or_far_from_the_original_are_dropped() -> None:
    original = "When was the Saltmarsh Institute founded?"
    assert similarity(original, "In what year did Brackett found the Saltmarsh Institute?") == 2 / 3
    assert paraphrase_problem(original, "In which year was the Saltmarsh Institute founded?", [], 0.5) is None
    assert paraphrase_problem(original, "when was the saltmarsh institute founded", [], 0.5) == (
        "paraphrase identical to the original"
    )
    earlier = ["In which year was the Saltmarsh Institute founded?"]
    assert paraphrase_problem(original, "In which year was the Saltmarsh Institute founded", earlier, 0.5) == (
        "paraphrase repeats another"
    )
    assert (
        paraphrase_problem(original, "What is the capital of France?", [], 0.5)
        == "paraphrase too far from the original"
    )
    statement = paraphrase_problem("Who is Felix Ambrose?", "Felix Ambrose is a famous sculptor.", [], 0.5)
    assert statement == "paraphrase is not a question"  # what SmolLM2-135M offered as a rephrasing
