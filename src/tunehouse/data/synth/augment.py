"""`tunehouse data augment`: each example's user turn asked again in other words, its answer kept.

A model fine-tuned on one phrasing of each fact recalls it for that phrasing only; rephrasings of
the question teach it to find the fact from other wordings (seed 001's "other ways to ask the
questions"). The question is the user turn's last paragraph; paragraphs before it are its context
passage, kept as it is, or, with `rewrite_context`, rewritten for each rephrasing (varied forms of
the source text help more than varied questions alone). Originals are kept. An example and its
rephrasings share a `group` id, which `tunehouse data split` keeps on one side and `data overlap`
checks across files; an input line that already has a group keeps it.
"""

from __future__ import annotations

import copy
import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tunehouse.data.legacy import gather_facts
from tunehouse.data.reader import existing_file, iter_lines, strip_line
from tunehouse.data.split import normalized_text
from tunehouse.data.synth.cache import ReplyCache
from tunehouse.data.synth.chunking import count_tokens, token_measure
from tunehouse.data.synth.client import Endpoint, Generator, RequestFailed, Sampling, Usage
from tunehouse.data.synth.curation import paraphrase_problem
from tunehouse.data.synth.output import write_jsonl
from tunehouse.data.synth.prompts import PromptSet, reply_tokens
from tunehouse.data.synth.replies import read_paraphrases, read_rewrite
from tunehouse.data.synth.tally import Tally
from tunehouse.data.synth.work import Progress, Task, derive_seed, run_tasks
from tunehouse.errors import InvalidRequest, InvalidValue
from tunehouse.models.template import message_text

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class AugmentOptions:
    paraphrases: int = 3
    rewrite_context: bool = False
    seed: int = 0
    concurrency: int = 4
    min_similarity: float = 0.5  # share of the original question's content words a rephrasing keeps
    max_pair_tokens: int = 512

    def __post_init__(self) -> None:
        if not 1 <= self.paraphrases <= 20:
            raise InvalidValue("--paraphrases must be between 1 and 20.", param="paraphrases")
        if not 0 <= self.min_similarity <= 1:
            raise InvalidValue("--min-similarity is a fraction from 0 to 1.", param="min_similarity")


@dataclass
class Source:
    """One input example and the parts of it a rephrasing changes."""

    line: int
    example: dict[str, Any]
    group: str
    context: str | None  # the user turn's paragraphs before the question
    question: str
    answer: str
    user_index: int | None  # chat: the user message's index; None for prompt/completion
    variants: list[tuple[int, str, str | None]] = field(default_factory=list)  # (k, question, rewritten context)


@dataclass
class AugmentReport:
    n_examples: int
    tally: Tally
    usage: Usage = field(default_factory=Usage)
    n_written: int = 0
    n_paraphrases: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "examples": self.n_examples,
            "stages": self.tally.to_list(),
            "usage": self.usage.to_dict(),
            "written": self.n_written,
            "paraphrases": self.n_paraphrases,
            "seconds": round(self.seconds, 3),
        }


def group_id(example: dict[str, Any]) -> str:
    """The example's own `group`, or one derived from its normalized text."""
    given = example.get("group")
    if isinstance(given, str) and given:
        return given
    return "g-" + hashlib.sha256(normalized_text(example).encode()).hexdigest()[:12]


def _split_turn(text: str) -> tuple[str | None, str]:
    paragraphs = [p.strip() for p in _PARAGRAPH_BREAK.split(text.strip()) if p.strip()]
    if len(paragraphs) < 2:
        return None, text.strip()
    return "\n\n".join(paragraphs[:-1]), paragraphs[-1]


def _chat_source(line: int, example: dict[str, Any]) -> Source | str:
    messages = example.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return "no messages list"
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    user = max((i for i, m in enumerate(messages[: last or 0]) if m.get("role") == "user"), default=None)
    if last is None or user is None:
        return "no user turn answered by an assistant turn"
    text, answer = message_text(messages[user].get("content")), message_text(messages[last].get("content"))
    if not text.strip() or not answer.strip():
        return "empty user or assistant turn"
    context, question = _split_turn(text)
    return Source(line, example, group_id(example), context, question, answer.strip(), user)


def _legacy_source(line: int, example: dict[str, Any], separator: str, stop: str) -> Source | str:
    prompt, completion = example.get("prompt"), example.get("completion")
    if not isinstance(prompt, str) or not isinstance(completion, str):
        return "no string prompt and completion"
    body = prompt[: -len(separator)] if separator and prompt.endswith(separator) else prompt
    answer = (completion[: -len(stop)] if stop and completion.endswith(stop) else completion).strip()
    if not body.strip() or not answer:
        return "empty prompt or completion"
    context, question = _split_turn(body)
    return Source(line, example, group_id(example), context, question, answer, None)


def read_sources(path: Path, tally: Tally) -> tuple[list[Source], str]:
    """The file's examples (chat or prompt/completion) and, for the latter, the separator they end with."""
    path = existing_file(path)
    facts = gather_facts(path)
    separator = facts.common_separator if facts.n > 1 and facts.prompts_differ else ""
    stop = facts.common_stop if facts.n > 1 and facts.completions_differ else ""
    stage = tally["examples read"]
    sources = []
    for number, raw in iter_lines(path):
        line = strip_line(raw or b"", number == 1)
        if not line:
            continue
        try:
            example = orjson.loads(line)
        except orjson.JSONDecodeError:
            example = None
        if not isinstance(example, dict):
            stage.drop("not a JSON object", f"line {number}")
            continue
        source = (
            _chat_source(number, example) if "messages" in example else _legacy_source(number, example, separator, stop)
        )
        if isinstance(source, str):
            stage.drop(source, f"line {number}")
        else:
            stage.keep()
            sources.append(source)
    if not sources:
        raise InvalidRequest(f"{path} holds no chat or prompt/completion example to augment.", param="file")
    return sources, separator


class _Augmentation:
    def __init__(self, generator: Generator, prompts: PromptSet, options: AugmentOptions, tally: Tally) -> None:
        self.generator, self.prompts, self.options, self.tally = generator, prompts, options, tally
        self.measure = token_measure(generator.endpoint.model, generator.endpoint.base_url)
        self._lock = threading.Lock()

    def paraphrase_task(self, source: Source) -> Task:
        def task() -> list[Task]:
            n = self.options.paraphrases
            messages = self.prompts.paraphrase.messages(question=source.question, answer=source.answer, n=n)
            seed = derive_seed(self.options.seed, "paraphrase", source.question, source.answer)
            requests, stage = self.tally["paraphrase requests (examples)"], self.tally["paraphrases"]
            try:
                found = self.generator.ask(
                    messages, lambda reply: read_paraphrases(reply, n), seed, reply_tokens("paraphrase", n)
                )
            except RequestFailed as exc:
                requests.drop(str(exc), f"line {source.line}")
                return []
            requests.keep()
            for _ in range(n - len(found)):
                stage.drop("reply held fewer rephrasings than asked", f"line {source.line}")
            kept: list[str] = []
            for paraphrase in found:
                problem = paraphrase_problem(source.question, paraphrase, kept, self.options.min_similarity)
                tokens = count_tokens(self.measure, paraphrase) + count_tokens(self.measure, source.answer)
                if problem is None and tokens > self.options.max_pair_tokens:
                    problem = "over-long pair"
                if problem:
                    stage.drop(problem, paraphrase)
                else:
                    stage.keep()
                    kept.append(paraphrase)
            with self._lock:
                source.variants = [(k, q, None) for k, q in enumerate(kept)]
            if self.options.rewrite_context and source.context is None:
                self.tally["context rewrites"].drop("no context passage to rewrite", f"line {source.line}")
            if not (self.options.rewrite_context and source.context):
                return []
            return [self.rewrite_task(source, k) for k, _ in enumerate(kept)]

        return task

    def rewrite_task(self, source: Source, k: int) -> Task:
        def task() -> list[Task]:
            context = source.context or ""
            messages = self.prompts.rewrite.messages(passage=context)
            seed = derive_seed(self.options.seed, "rewrite", context, k)
            stage = self.tally["context rewrites"]
            try:
                budget = reply_tokens("rewrite", passage_tokens=count_tokens(self.measure, context))
                rewritten = self.generator.ask(messages, lambda reply: read_rewrite(reply, context), seed, budget)
            except RequestFailed as exc:
                stage.drop(f"{exc}; the original context kept", f"line {source.line}")
                return []
            stage.keep()
            with self._lock:
                index, question, _ = source.variants[k]
                source.variants[k] = (index, question, rewritten)
            return []

        return task


def _variant(source: Source, question: str, context: str | None, separator: str) -> dict[str, Any]:
    turn = f"{context}\n\n{question}" if context else question
    example = copy.deepcopy(source.example)
    if source.user_index is None:
        example["prompt"] = turn + separator
    else:
        example["messages"][source.user_index]["content"] = turn
    example["group"] = source.group
    return example


def _rows(sources: list[Source], separator: str) -> list[dict[str, Any]]:
    rows = []
    for source in sources:
        rows.append(source.example | {"group": source.group})
        for _, question, rewritten in source.variants:
            rows.append(_variant(source, question, rewritten or source.context, separator))
    return rows


def augment(
    source_path: Path,
    out: Path,
    endpoint: Endpoint,
    prompts: PromptSet,
    options: AugmentOptions,
    cache: ReplyCache,
    sampling: Sampling | None = None,
    progress: Progress | None = None,
) -> AugmentReport:
    """Write `out`: every readable example of `source_path`, each followed by its kept rephrasings."""
    started = time.perf_counter()
    tally = Tally()
    sources, separator = read_sources(source_path, tally)
    generator = Generator(endpoint, cache, sampling)
    report = AugmentReport(len(sources), tally, generator.usage)
    work = _Augmentation(generator, prompts, options, tally)
    try:
        generator.check()
        run_tasks([work.paraphrase_task(s) for s in sources], options.concurrency, "rephrasing", progress)
    finally:
        generator.close()
    rows = _rows(sources, separator)
    report.n_written = write_jsonl(out, rows)
    report.n_paraphrases = report.n_written - len(sources)
    report.seconds = time.perf_counter() - started
    return report
