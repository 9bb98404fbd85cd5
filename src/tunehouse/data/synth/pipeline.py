"""`tunehouse data synth`: documents → passages → questions → grounded answers → curated pairs → JSONL.

Seed 003's script made by a command: each passage (not each whole article) is asked for
`per_chunk` questions, then each question is answered from its passage alone, one request each.
Every reply is cached as it arrives (see `cache.py`), so a run killed halfway and run again asks
only for what it did not yet have. The pairs then pass the curation stages in a fixed order (cheap
checks first, the optional judge last) and are written whole, with a provenance sidecar that names
each pair's document, character span and generator model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tunehouse.data.synth.cache import ReplyCache
from tunehouse.data.synth.chunking import Chunk, TokenMeasure, chunk_document, count_tokens, token_measure
from tunehouse.data.synth.client import Endpoint, Generator, RequestFailed, Sampling, Usage
from tunehouse.data.synth.curation import NearDuplicates, grounding_problem
from tunehouse.data.synth.documents import load_documents
from tunehouse.data.synth.output import ExampleFormat, provenance_path, write_jsonl
from tunehouse.data.synth.prompts import PromptSet, reply_tokens
from tunehouse.data.synth.replies import NoAnswer, read_answer, read_questions, read_rating
from tunehouse.data.synth.tally import Tally
from tunehouse.data.synth.work import Progress, Task, derive_seed, run_tasks
from tunehouse.errors import InvalidValue

MESSAGE_OVERHEAD_TOKENS = 4  # what a chat template adds around each message, roughly


@dataclass(frozen=True)
class SynthOptions:
    per_chunk: int = 3
    chunk_tokens: int = 256
    overlap_tokens: int = 32
    seed: int = 0
    concurrency: int = 4
    min_support: float = 0.6  # share of an answer's content words found in its passage
    dedup_threshold: float = 0.8  # estimated Jaccard of word-pair sets from which a pair repeats another
    max_pair_tokens: int = 512
    judge_model: str | None = None
    judge_threshold: int = 7

    def __post_init__(self) -> None:
        if not 1 <= self.per_chunk <= 20:
            raise InvalidValue("--per-chunk must be between 1 and 20.", param="per_chunk")
        if not 0 <= self.min_support <= 1 or not 0 < self.dedup_threshold <= 1:
            raise InvalidValue("--min-support and --dedup-threshold are fractions from 0 to 1.", param="min_support")
        if not 1 <= self.judge_threshold <= 10:
            raise InvalidValue("--judge-threshold is a rating from 1 to 10.", param="judge_threshold")


@dataclass(frozen=True)
class Pair:
    chunk: Chunk
    number: int  # the question's place among its passage's questions
    question: str
    answer: str
    rating: int | None = None


@dataclass
class Estimate:
    requests: int
    prompt_tokens: int
    max_completion_tokens: int


@dataclass
class SynthReport:
    n_documents: int
    n_chunks: int
    tokens: str  # how passages were measured
    tally: Tally
    usage: Usage = field(default_factory=Usage)
    judge_usage: Usage | None = None
    n_written: int = 0
    seconds: float = 0.0
    estimate: Estimate | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "documents": self.n_documents,
            "chunks": self.n_chunks,
            "tokens": self.tokens,
            "stages": self.tally.to_list(),
            "usage": self.usage.to_dict(),
            "judge_usage": self.judge_usage.to_dict() if self.judge_usage else None,
            "written": self.n_written,
            "seconds": round(self.seconds, 3),
            "estimate": vars(self.estimate) if self.estimate else None,
        }


def _where(chunk: Chunk) -> str:
    return f"{chunk.document.path.name} passage {chunk.index + 1}"


def estimate(
    chunks: list[Chunk], prompts: PromptSet, options: SynthOptions, measure: TokenMeasure, max_tokens: int
) -> Estimate:
    """Requests and tokens a run will need at most (every question asked, every reply at its budget, no retries)."""

    def tokens(messages: list[dict[str, str]]) -> int:
        return sum(count_tokens(measure, m["content"]) + MESSAGE_OVERHEAD_TOKENS for m in messages)

    question = "A typical question about this passage of about twelve words, with a name?"
    per_chunk = options.per_chunk
    prompt_tokens = 0
    for chunk in chunks:
        prompt_tokens += tokens(prompts.questions.messages(passage=chunk.text, n=per_chunk))
        prompt_tokens += per_chunk * tokens(prompts.answer.messages(passage=chunk.text, question=question))
        if options.judge_model:
            answer = "A typical answer sentence taken from the passage, about fifteen words long in all."
            prompt_tokens += per_chunk * tokens(
                prompts.judge.messages(passage=chunk.text, question=question, answer=answer)
            )
    budgets = [reply_tokens("questions", per_chunk)] + [reply_tokens("answer")] * per_chunk
    budgets += [reply_tokens("judge")] * per_chunk if options.judge_model else []
    completion_tokens = len(chunks) * sum(min(budget, max_tokens) for budget in budgets)
    return Estimate(len(chunks) * len(budgets), prompt_tokens, completion_tokens)


class _Generation:
    """The question and answer requests of one run, filling `pairs` and the tally from worker threads."""

    def __init__(self, generator: Generator, prompts: PromptSet, options: SynthOptions, tally: Tally) -> None:
        self.generator, self.prompts, self.options, self.tally = generator, prompts, options, tally
        self.pairs: list[Pair] = []
        self.missing_questions = 0
        self._lock = threading.Lock()

    def questions_task(self, chunk: Chunk) -> Task:
        def task() -> list[Task]:
            n = self.options.per_chunk
            messages = self.prompts.questions.messages(passage=chunk.text, n=n)
            stage = self.tally["question requests (passages)"]
            try:
                questions = self.generator.ask(
                    messages,
                    lambda reply: read_questions(reply, n),
                    derive_seed(self.options.seed, "q", chunk.text),
                    reply_tokens("questions", n),
                )
            except RequestFailed as exc:
                stage.drop(str(exc), _where(chunk))
                questions = []
            else:
                stage.keep()
            with self._lock:
                self.missing_questions += n - len(questions)
            return [self.answer_task(chunk, number, q) for number, q in enumerate(questions)]

        return task

    def answer_task(self, chunk: Chunk, number: int, question: str) -> Task:
        def task() -> list[Task]:
            messages = self.prompts.answer.messages(passage=chunk.text, question=question)
            stage = self.tally["answer requests (questions)"]
            try:
                answer = self.generator.ask(
                    messages,
                    read_answer,
                    derive_seed(self.options.seed, "a", chunk.text, question),
                    reply_tokens("answer"),
                )
            except RequestFailed as exc:
                stage.drop(str(exc), question)
                return []
            except NoAnswer:
                stage.drop("the passage does not answer it (NONE)", question)
                return []
            stage.keep()
            with self._lock:
                self.pairs.append(Pair(chunk, number, question, answer))
            return []

        return task


def _judge(
    pairs: list[Pair],
    judge: Generator,
    prompts: PromptSet,
    options: SynthOptions,
    tally: Tally,
    progress: Progress | None,
) -> list[Pair]:
    """Pairs the judge model rates at least `judge_threshold` out of 10."""
    rated: dict[int, int] = {}
    stage = tally[f"judge rating ≥ {options.judge_threshold}"]

    def task_for(index: int, pair: Pair) -> Task:
        def task() -> list[Task]:
            messages = prompts.judge.messages(passage=pair.chunk.text, question=pair.question, answer=pair.answer)
            seed = derive_seed(options.seed, "judge", pair.chunk.text, pair.question, pair.answer)
            try:
                rated[index] = judge.ask(messages, read_rating, seed, reply_tokens("judge"))
            except RequestFailed as exc:
                stage.drop(f"judge: {exc}", pair.question)
            return []

        return task

    run_tasks([task_for(i, p) for i, p in enumerate(pairs)], options.concurrency, "judging", progress)
    kept = []
    for index, pair in enumerate(pairs):
        if index not in rated:
            continue
        if rated[index] < options.judge_threshold:
            stage.drop(f"rated below {options.judge_threshold}", pair.question)
            continue
        stage.keep()
        kept.append(Pair(pair.chunk, pair.number, pair.question, pair.answer, rated[index]))
    return kept


def curate(pairs: list[Pair], options: SynthOptions, measure: TokenMeasure, tally: Tally) -> list[Pair]:
    """The cheap stages, in order: over-long, grounded, near duplicates."""
    kept = []
    for pair in pairs:
        tokens = count_tokens(measure, pair.question) + count_tokens(measure, pair.answer)
        if tokens > options.max_pair_tokens:
            tally[f"length ≤ {options.max_pair_tokens} tokens"].drop("over-long pair", pair.question)
        else:
            tally[f"length ≤ {options.max_pair_tokens} tokens"].keep()
            kept.append(pair)
    grounded = []
    for pair in kept:
        problem = grounding_problem(pair.question, pair.answer, pair.chunk.text, options.min_support)
        if problem:
            tally["grounded in the passage"].drop(problem, pair.question)
        else:
            tally["grounded in the passage"].keep()
            grounded.append(pair)
    unique = []
    duplicates = NearDuplicates(options.dedup_threshold)
    for index, pair in enumerate(grounded):
        if duplicates.seen(str(index), f"{pair.question} {pair.answer}"):
            tally["near duplicates"].drop("near duplicate of an earlier pair", pair.question)
        else:
            tally["near duplicates"].keep()
            unique.append(pair)
    return unique


def _provenance(line: int, pair: Pair, model: str) -> dict[str, Any]:
    record = {
        "line": line,
        "document": str(pair.chunk.document.path),
        "kind": pair.chunk.document.kind,
        "span": [pair.chunk.start, pair.chunk.end],
        "passage": pair.chunk.index,
        "model": model,
    }
    return record | ({"judge_rating": pair.rating} if pair.rating is not None else {})


def synthesize(
    documents: Sequence[str | Path],
    out: Path | None,
    endpoint: Endpoint,
    prompts: PromptSet,
    options: SynthOptions,
    example_format: ExampleFormat,
    cache: ReplyCache,
    sampling: Sampling | None = None,
    progress: Progress | None = None,
    dry_run: bool = False,
) -> SynthReport:
    """Run the pipeline; with `dry_run`, stop after chunking and return the estimate."""
    started = time.perf_counter()
    sampling = sampling or Sampling()
    tally = Tally()
    docs = load_documents(documents, tally["documents"])
    measure = token_measure(endpoint.model, endpoint.base_url)
    chunks = [c for d in docs for c in chunk_document(d, measure, options.chunk_tokens, options.overlap_tokens)]
    report = SynthReport(len(docs), len(chunks), measure.name, tally)
    if dry_run:
        report.estimate = estimate(chunks, prompts, options, measure, sampling.max_tokens)
        return report
    generator = Generator(endpoint, cache, sampling)
    report.usage = generator.usage
    generation = _Generation(generator, prompts, options, tally)
    per_chunk = options.per_chunk
    try:
        generator.check()
        run_tasks(
            [generation.questions_task(c) for c in chunks],
            options.concurrency,
            "generating",
            progress,
            total=lambda _: len(chunks) * (1 + per_chunk) - generation.missing_questions,
        )
    finally:
        generator.close()
    order = {id(d): i for i, d in enumerate(docs)}
    pairs = sorted(generation.pairs, key=lambda p: (order[id(p.chunk.document)], p.chunk.index, p.number))
    pairs = curate(pairs, options, measure, tally)
    if options.judge_model:
        judge_endpoint = replace(endpoint, model=options.judge_model)
        judge = Generator(judge_endpoint, cache, Sampling(temperature=0.0))
        report.judge_usage = judge.usage
        try:
            pairs = _judge(pairs, judge, prompts, options, tally, progress)
        finally:
            judge.close()
    if out is not None and pairs:  # with no pair, an earlier file stays as it was
        report.n_written = write_jsonl(out, (example_format.example(p.question, p.answer) for p in pairs))
        write_jsonl(provenance_path(out), (_provenance(i + 1, p, endpoint.model) for i, p in enumerate(pairs)))
    report.seconds = time.perf_counter() - started
    return report
