"""Graders in OpenAI's shapes, each against values worked out by hand.

Model graders are driven here by a caller that answers fixed strings (a fake model); the real
model path, the server's own engine, is driven in tests/api/test_graders.py.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunehouse.errors import InvalidRequest
from tunehouse.eval.graders import GradeResult, ModelReply, Sample, grade, render, validate_grader
from tunehouse.eval.graders.formula import FormulaError, evaluate


def no_model(model: str, messages: list[dict[str, Any]], sampling: dict[str, Any]) -> str:
    raise AssertionError("this grader calls no model")


def run(grader: dict[str, Any], output: str, item: dict[str, Any] | None = None, **kwargs: Any) -> GradeResult:
    kwargs.setdefault("call_model", no_model)
    return grade(grader, item=item or {}, sample=Sample.from_text(output), **kwargs)


def refused(grader: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        validate_grader(grader)
    return caught.value


# --- templates --------------------------------------------------------------------------------------


def test_templates_reach_into_items_and_samples() -> None:
    item = {"label": "yes", "meta": {"lang": "en"}, "rows": [{"n": 3}], "tags": ["a", "b"]}
    sample = Sample.from_text('{"answer": "no", "n": 2}', output_tools=[{"function": {"name": "lookup"}}])
    text = (
        "{{item.label}}|{{ item.meta.lang }}|{{item.rows[0].n}}|{{item.tags}}|{{sample.output_json.answer}}|"
        "{{sample.output_json.n}}|{{sample.output_tools[0].function.name}}"
    )
    assert render(text, item=item, sample=sample) == 'yes|en|3|["a", "b"]|no|2|lookup'


def test_a_sample_that_is_not_json_has_no_output_json() -> None:
    assert Sample.from_text("plain words").output_json is None
    assert Sample.from_text("[1, 2]").output_json == [1, 2]


def test_a_reference_outside_item_and_sample_is_refused_when_validated() -> None:
    error = refused(
        {"type": "string_check", "name": "s", "input": "{{output_text}}", "reference": "x", "operation": "eq"}
    )
    assert error.param == "grader.input"
    assert "{{item.…}} and {{sample.…}}" in error.message
    error = refused(
        {"type": "string_check", "name": "s", "input": "x", "reference": "{{sample.text}}", "operation": "eq"}
    )
    assert error.param == "grader.reference" and "output_text" in error.message


def test_a_field_the_item_lacks_fails_that_item_only() -> None:
    grader = {"type": "string_check", "name": "s", "input": "{{sample.output_text}}", "reference": "{{item.label}}"}
    result = run({**grader, "operation": "eq"}, "yes", {"labels": "yes"})
    assert (result.score, result.passed, result.error_type) == (0.0, False, "invalid_variable_error")
    assert "'label'" in (result.error or "")


# --- string_check -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "output", "expected"),
    [
        ("eq", "Paris", 1.0),
        ("eq", "paris", 0.0),
        ("ne", "Lyon", 1.0),
        ("ne", "Paris", 0.0),
        ("like", "It is Paris.", 1.0),  # OpenAI's like: the input contains the reference
        ("like", "It is paris.", 0.0),
        ("ilike", "IT IS PARIS.", 1.0),
        ("ilike", "It is Lyon.", 0.0),
    ],
)
def test_string_check_operations(operation: str, output: str, expected: float) -> None:
    grader = {
        "type": "string_check",
        "name": "city",
        "input": "{{sample.output_text}}",
        "reference": "{{item.city}}",
        "operation": operation,
    }
    result = run(grader, output, {"city": "Paris"})
    assert (result.score, result.passed) == (expected, expected == 1.0)


def test_an_unknown_operation_is_refused_naming_it() -> None:
    error = refused({"type": "string_check", "name": "s", "input": "a", "reference": "b", "operation": "contains"})
    assert error.param == "grader.operation" and "eq, ne, like, ilike" in error.message


# --- text_similarity --------------------------------------------------------------------------------

HYPOTHESIS, REFERENCE = "the cat sat on a mat", "the cat sat on the mat"


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        # rapidfuzz's ratio of kitten/sitting is done below; here: 2 * 19 common chars / (20 + 22)
        ("fuzzy_match", 2 * 19 / 42),
        # precisions 5/6, 3/5, 2/4, 1/3, equal lengths so no brevity penalty
        ("bleu", (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25),
        # n-grams of 1..4 matched: 5 + 3 + 2 + 1 = 11 of 6 + 5 + 4 + 3 = 18, on either side
        ("gleu", 11 / 18),
        ("rouge_1", 5 / 6),  # 5 of 6 words shared
        ("rouge_2", 3 / 5),  # the cat, cat sat, sat on
        ("rouge_3", 2 / 4),
        ("rouge_4", 1 / 3),
        ("rouge_5", 0.0),
        ("rouge_l", 5 / 6),  # longest common subsequence: the cat sat on mat
    ],
)
def test_text_similarity_metrics(metric: str, expected: float) -> None:
    grader = {
        "type": "text_similarity",
        "name": "sim",
        "input": "{{sample.output_text}}",
        "reference": "{{item.reference}}",
        "evaluation_metric": metric,
    }
    result = run(grader, HYPOTHESIS, {"reference": REFERENCE}, pass_threshold=0.5)
    assert result.score == pytest.approx(expected, abs=1e-4)
    assert result.passed is (result.score >= 0.5)


def test_fuzzy_match_is_the_normalised_indel_similarity() -> None:
    grader = {"type": "text_similarity", "name": "f", "input": "kitten", "reference": "sitting"}
    # longest common subsequence "ittn": 1 - (6 + 7 - 2 * 4) / (6 + 7)
    assert run({**grader, "evaluation_metric": "fuzzy_match"}, "").score == pytest.approx(8 / 13)


def test_meteor_without_wordnet_is_refused_saying_why() -> None:
    from tunehouse.eval.graders.text_similarity import _wordnet_installed

    if _wordnet_installed():
        pytest.skip("WordNet is installed here, so meteor runs")
    error = refused(
        {"type": "text_similarity", "name": "m", "input": "a", "reference": "b", "evaluation_metric": "meteor"}
    )
    assert error.param == "grader.evaluation_metric" and "WordNet" in error.message


def test_cosine_without_an_embedding_model_is_refused_saying_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNEHOUSE_GRADER_EMBEDDING_MODEL", raising=False)
    error = refused(
        {"type": "text_similarity", "name": "c", "input": "a", "reference": "b", "evaluation_metric": "cosine"}
    )
    assert error.param == "grader.evaluation_metric" and "TUNEHOUSE_GRADER_EMBEDDING_MODEL" in error.message


class EmbeddingEndpoint(BaseHTTPRequestHandler):
    """An OpenAI-compatible `/v1/embeddings` with fixed vectors (no embedding model runs here)."""

    VECTORS = {"cat": [1.0, 0.0], "kitten": [0.6, 0.8], "dog": [0.0, 2.0]}

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        data = [{"object": "embedding", "index": i, "embedding": self.VECTORS[t]} for i, t in enumerate(body["input"])]
        reply = {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": 2, "total_tokens": 2},
        }
        payload = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


def test_cosine_uses_the_configured_embedding_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), EmbeddingEndpoint) as endpoint:
        threading.Thread(target=endpoint.serve_forever, daemon=True).start()
        monkeypatch.setenv("TUNEHOUSE_GRADER_BASE_URL", f"http://127.0.0.1:{endpoint.server_address[1]}/v1")
        monkeypatch.setenv("TUNEHOUSE_GRADER_EMBEDDING_MODEL", "embedder")
        grader = {"type": "text_similarity", "name": "c", "input": "{{sample.output_text}}", "reference": "cat"}
        grader["evaluation_metric"] = "cosine"
        assert run(grader, "kitten").score == pytest.approx(0.6)  # (1, 0) . (0.6, 0.8)
        assert run(grader, "dog").score == pytest.approx(0.0)
        endpoint.shutdown()


# --- score_model and label_model with a model that answers fixed strings --------------------------


class FixedModel:
    """A fake model: answers `reply` and remembers what it was asked."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.calls: list[tuple[str, list[dict[str, Any]], dict[str, Any]]] = []

    def __call__(self, model: str, messages: list[dict[str, Any]], sampling: dict[str, Any]) -> ModelReply:
        self.calls.append((model, messages, sampling))
        return ModelReply(self.reply, prompt_tokens=12, completion_tokens=3)


SCORE_GRADER = {
    "type": "score_model",
    "name": "judge",
    "model": "judge-model",
    "input": [
        {"role": "system", "content": "Score from 0 to 1."},
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Reference: {{item.reference}}"},
                {"type": "input_text", "text": "Answer: {{sample.output_text}}"},
            ],
        },
    ],
    "sampling_params": {"temperature": 0, "max_completions_tokens": 16, "seed": 7},
}


def test_score_model_sends_the_rendered_messages_and_reads_the_score() -> None:
    model = FixedModel("0.75")
    result = run(SCORE_GRADER, "blue", {"reference": "blue"}, call_model=model, pass_threshold=0.5)
    assert (result.score, result.passed, result.error) == (0.75, True, None)
    name, messages, sampling = model.calls[0]
    assert name == "judge-model"
    assert messages == [
        {"role": "system", "content": "Score from 0 to 1."},
        {"role": "user", "content": "Reference: blue\nAnswer: blue"},
    ]
    assert sampling == {"temperature": 0, "seed": 7, "max_tokens": 16}
    assert result.details["usage"] == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}


@pytest.mark.parametrize(
    ("reply", "bounds", "expected"),
    [
        ('{"result": 0.25, "steps": []}', [0, 1], 0.25),  # OpenAI's structured output
        ("I would give it 7 out of 10.", [0, 10], 7.0),  # words around the number
        ("-2", [-5, 5], -2.0),
    ],
)
def test_score_model_tolerates_replies_with_words(reply: str, bounds: list[float], expected: float) -> None:
    result = run({**SCORE_GRADER, "range": bounds}, "x", {"reference": "y"}, call_model=FixedModel(reply))
    assert result.score == expected and result.error is None
    assert result.passed is (expected == bounds[1])  # no threshold: full marks pass


@pytest.mark.parametrize("reply", ["Looks great!", "1.5"])
def test_score_model_without_a_score_in_range_is_a_parse_error(reply: str) -> None:
    result = run(SCORE_GRADER, "x", {"reference": "y"}, call_model=FixedModel(reply))
    assert (result.score, result.passed, result.error_type) == (0.0, False, "model_grader_parse_error")
    assert result.details["reply"] == reply


def test_a_model_that_cannot_answer_is_a_server_error_not_an_exception() -> None:
    def unreachable(model: str, messages: list[dict[str, Any]], sampling: dict[str, Any]) -> str:
        raise ConnectionError("connection refused")

    result = run(SCORE_GRADER, "x", {"reference": "y"}, call_model=unreachable)
    assert result.error_type == "model_grader_server_error" and "connection refused" in (result.error or "")


LABEL_GRADER = {
    "type": "label_model",
    "name": "sentiment",
    "model": "judge-model",
    "input": [{"role": "user", "content": "Classify: {{sample.output_text}}"}],
    "labels": ["positive", "neutral", "negative"],
    "passing_labels": ["positive"],
}


@pytest.mark.parametrize(
    ("reply", "label", "passed"),
    [
        ("positive", "positive", True),
        ('{"result": "neutral"}', "neutral", False),
        ("The sentiment is Negative.", "negative", False),
        ("'Positive'.", "positive", True),
    ],
)
def test_label_model_reads_the_label(reply: str, label: str, passed: bool) -> None:
    result = run(LABEL_GRADER, "I love it", call_model=FixedModel(reply))
    assert (result.details["label"], result.passed, result.score) == (label, passed, float(passed))


def test_label_model_without_a_label_is_a_parse_error() -> None:
    result = run(LABEL_GRADER, "I love it", call_model=FixedModel("I cannot tell."))
    assert (result.error_type, result.passed) == ("model_grader_parse_error", False)


def test_passing_labels_must_be_labels() -> None:
    error = refused({**LABEL_GRADER, "passing_labels": ["positive", "great"]})
    assert error.param == "grader.passing_labels[1]"


def test_model_graders_take_text_only() -> None:
    image = {"type": "input_image", "image_url": "https://example.com/a.png"}
    error = refused({**LABEL_GRADER, "input": [{"role": "user", "content": [image]}]})
    assert error.param == "grader.input[0].content[0].type"


# --- multi and its formula --------------------------------------------------------------------------

MULTI: dict[str, Any] = {
    "type": "multi",
    "name": "combined",
    "graders": {
        "exact": {
            "type": "string_check",
            "name": "exact",
            "input": "{{sample.output_text}}",
            "reference": "{{item.answer}}",
            "operation": "eq",
        },
        "similar": {
            "type": "text_similarity",
            "name": "similar",
            "input": "{{sample.output_text}}",
            "reference": "{{item.answer}}",
            "evaluation_metric": "rouge_1",
        },
    },
    "calculate_output": "0.5 * exact + 0.5 * similar ^ 2",
}


def test_multi_combines_named_graders_by_its_formula() -> None:
    result = run(MULTI, HYPOTHESIS, {"answer": REFERENCE}, pass_threshold=0.3)
    # exact 0, rouge_1 5/6; ^ is a power and binds before *
    assert result.details["sub_rewards"] == {"exact": 0.0, "similar": pytest.approx(5 / 6)}
    assert result.score == pytest.approx(0.5 * (5 / 6) ** 2)
    assert result.passed


def test_multi_fails_with_its_failing_sub_grader() -> None:
    result = run(MULTI, "x", {"other": 1})
    assert result.error_type == "invalid_variable_error" and "'exact'" in (result.error or "")


def test_multi_formula_errors_name_the_field() -> None:
    error = refused({**MULTI, "calculate_output": "exact + typo"})
    assert error.param == "grader.calculate_output" and "'typo'" in error.message
    error = refused({**MULTI, "calculate_output": "__import__('os').system('true')"})
    assert error.param == "grader.calculate_output"


def test_a_sub_grader_error_names_its_path() -> None:
    graders = {**MULTI["graders"], "bad": {"type": "string_check", "name": "b", "input": "a", "reference": "b"}}
    error = refused({**MULTI, "graders": graders})
    assert error.param == "grader.graders.bad.operation" and "Missing required parameter" in error.message


def test_a_formula_that_divides_by_zero_fails_the_item() -> None:
    result = run({**MULTI, "calculate_output": "similar / exact"}, HYPOTHESIS, {"answer": REFERENCE})
    assert result.error_type == "formula_parse_error"


@pytest.mark.parametrize(
    ("formula", "expected"),
    [
        ("min(a, b) + sqrt(4) * 2^3", 0.5 + 2 * 8),
        ("max(a, 0.75) - abs(-0.25)", 0.5),
        ("floor(2.7) + ceil(a) + log(exp(2))", 2 + 1 + 2),
        ("-(a + b) / 2 ** 2", -0.375),
    ],
)
def test_formulas_compute_as_openai_documents(formula: str, expected: float) -> None:
    assert evaluate(formula, {"a": 0.5, "b": 1.0}) == pytest.approx(expected)


@pytest.mark.parametrize(
    "formula", ["a.real", "[a]", "(lambda: 1)()", "a if b else 1", "open('x')", "9 ** 9 ** 9", "sqrt(-1)", "'s'"]
)
def test_formulas_refuse_everything_else(formula: str) -> None:
    with pytest.raises(FormulaError):
        evaluate(formula, {"a": 0.5, "b": 1.0})


# --- python -----------------------------------------------------------------------------------------


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch) -> tuple[float, int]:
    monkeypatch.setenv("TUNEHOUSE_PYTHON_GRADER_TIMEOUT_S", "2")
    monkeypatch.setenv("TUNEHOUSE_PYTHON_GRADER_MEMORY_MB", "256")
    return 2.0, 256


def python_grader(source: str) -> dict[str, Any]:
    return {"type": "python", "name": "py", "source": source}


def test_python_grader_scores_and_its_output_comes_back(limits: tuple[float, int]) -> None:
    source = (
        "def grade(sample, item):\n"
        "    print('comparing', sample['output_text'], item['label'])\n"
        "    return 1.0 if sample['output_json']['label'] == item['label'] else 0.25\n"
    )
    result = run(python_grader(source), '{"label": "cat"}', {"label": "dog"})
    assert (result.score, result.error) == (0.25, None)
    assert result.details["stdout"] == 'comparing {"label": "cat"} dog\n'


def test_python_grader_exception_is_reported(limits: tuple[float, int]) -> None:
    result = run(python_grader("def grade(sample, item):\n    return item['missing']\n"), "x", {"label": "y"})
    assert result.error_type == "python_grader_runtime_error"
    assert "KeyError: 'missing'" in (result.error or "") and 'File "<grader source>", line 2' in (result.error or "")


def test_python_grader_that_loops_forever_is_stopped(limits: tuple[float, int]) -> None:
    started = time.monotonic()
    result = run(python_grader("def grade(sample, item):\n    while True:\n        pass\n"), "x")
    assert time.monotonic() - started < limits[0] + 2
    assert result.error_type == "unresponsive_reward_error" and "2 s time limit" in (result.error or "")


def test_python_grader_that_allocates_without_bound_is_stopped(limits: tuple[float, int]) -> None:
    source = "def grade(sample, item):\n    blocks = []\n    while True:\n        blocks.append(bytearray(10**7))\n"
    result = run(python_grader(source), "x")
    assert result.error_type == "python_grader_runtime_error" and "256 MiB memory limit" in (result.error or "")


def test_python_grader_cannot_open_a_socket(limits: tuple[float, int]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        source = f"import socket\ndef grade(sample, item):\n    socket.create_connection(('127.0.0.1', {port}))\n    return 1.0\n"
        result = run(python_grader(source), "x")
    assert result.error_type == "python_grader_runtime_error"
    assert "PermissionError: network access is disabled in python graders" in (result.error or "")


def test_python_grader_going_around_the_socket_module_finds_no_network(limits: tuple[float, int]) -> None:
    """libc's socket() and connect() directly, past Python's socket module: the namespace cuts it."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        source = (
            "import ctypes, struct\n"
            "def grade(sample, item):\n"
            "    libc = ctypes.CDLL(None)\n"
            "    fd = libc.socket(2, 1, 0)\n"
            f"    address = struct.pack('!HH4s8x', 2, {port}, bytes([127, 0, 0, 1]))\n"
            "    return 1.0 if libc.connect(fd, address, 16) == 0 else 0.0\n"
        )
        result = run(python_grader(source), "x")
    if result.details["network"] != "namespace":
        pytest.skip("this kernel gives no user namespace: only Python's socket module is closed")
    assert (result.score, result.error) == (0.0, None)


def test_python_grader_sees_none_of_the_servers_environment(
    limits: tuple[float, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNEHOUSE_GRADER_API_KEY", "secret")
    source = "import os\ndef grade(sample, item):\n    return float(any('secret' in v for v in os.environ.values()))\n"
    assert run(python_grader(source), "x").score == 0.0


def test_python_source_is_checked_when_validated() -> None:
    assert refused(python_grader("def grade(sample, item)\n    return 1\n")).message.startswith("grader.source line 1:")
    assert "must define grade" in refused(python_grader("def score(sample, item):\n    return 1\n")).message


# --- validation in general --------------------------------------------------------------------------


def test_unknown_fields_and_types_are_refused_naming_them() -> None:
    error = refused({"type": "string_check", "name": "s", "input": "a", "reference": "b", "operation": "eq", "op": 1})
    assert error.param == "grader.op"
    assert refused({"type": "regex", "name": "r"}).param == "grader.type"
    assert refused({"type": "score_model", "name": "s", "model": "m", "input": []}).param == "grader.input"


def test_validation_fills_in_defaults() -> None:
    grader = {"type": "score_model", "name": "s", "model": "m", "input": [{"role": "user", "content": "hi"}]}
    assert validate_grader(grader)["range"] == [0.0, 1.0]
    listed = validate_grader({**MULTI, "graders": list(MULTI["graders"].values())})
    assert set(listed["graders"]) == {"exact", "similar"}


# --- anything a client sends is a grader or a 400, never another exception ------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
FIELDS = {
    "name": st.text(max_size=6),
    "input": st.sampled_from(["{{sample.output_text}}", "{{item.x}}", "{{", "{{a..b}}", "{{item[0}}"])
    | JSON
    | st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "tool"]), "content": JSON}), max_size=2),
    "reference": st.sampled_from(["{{item.label}}", "plain"]) | JSON,
    "operation": st.sampled_from(["eq", "ilike", "glob"]) | JSON,
    "evaluation_metric": st.sampled_from(["bleu", "rouge_l", "rouge_9", "cosine"]) | JSON,
    "model": st.just("m") | JSON,
    "labels": st.lists(st.text(max_size=4), max_size=3) | JSON,
    "passing_labels": st.lists(st.text(max_size=4), max_size=3) | JSON,
    "range": st.lists(st.floats(allow_nan=True) | st.integers(), max_size=3) | JSON,
    "sampling_params": st.dictionaries(st.sampled_from(["seed", "top_p", "temperature", "x"]), JSON) | JSON,
    "source": st.sampled_from(["def grade(s, i):\n    return 1", "grade = 1", "def (", "x = 1"]) | JSON,
    "graders": st.dictionaries(st.sampled_from(["a", "b c", "1x"]), JSON, max_size=2) | JSON,
    "calculate_output": st.sampled_from(["a + 1", "a / 0", "b(", "max()", "a ** a"]) | JSON,
}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["string_check", "text_similarity", "score_model", "label_model", "python", "multi", "x"]),
    fields=st.dictionaries(st.sampled_from(sorted(FIELDS)), st.none(), max_size=len(FIELDS)),
    data=st.data(),
)
def test_any_object_is_a_grader_or_a_400(kind: str, fields: dict[str, None], data: st.DataObject) -> None:
    grader: dict[str, Any] = {"type": kind, **{key: data.draw(FIELDS[key], label=key) for key in fields}}
    try:
        validate_grader(grader)
    except InvalidRequest as error:
        assert error.param is not None and error.param.startswith("grader")


@pytest.mark.parametrize(
    ("sampling", "param"),
    [
        ({"temperature": 3}, "grader.sampling_params.temperature"),
        ({"top_p": float("nan")}, "grader.sampling_params.top_p"),
        ({"seed": 1.5}, "grader.sampling_params.seed"),
        ({"max_completions_tokens": 0}, "grader.sampling_params.max_completions_tokens"),
        ({"stop": ["x"]}, "grader.sampling_params.stop"),
    ],
)
def test_sampling_params_out_of_bounds_are_refused(sampling: dict[str, Any], param: str) -> None:
    assert refused({**SCORE_GRADER, "sampling_params": sampling}).param == param
