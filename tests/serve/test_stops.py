"""Stop sequences are cut from the text and never leak partially into a stream."""

from __future__ import annotations

from tunehouse.serve.stops import cut_at_stop, safe_prefix_length


def test_cut_at_earliest_stop() -> None:
    assert cut_at_stop("a END b ###", ["###", " END"]) == ("a", True)
    assert cut_at_stop("no stop here", ["###"]) == ("no stop here", False)


def test_a_tail_that_may_start_a_stop_is_held_back() -> None:
    assert safe_prefix_length("hello #", ["###"]) == len("hello ")
    assert safe_prefix_length("hello ##", ["###"]) == len("hello ")
    assert safe_prefix_length("hello", ["###"]) == len("hello")
    assert safe_prefix_length("hello", []) == len("hello")
