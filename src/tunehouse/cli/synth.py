"""`tunehouse data synth` and `tunehouse data augment`: training data made by a generator model.

Thin, like the rest of `tunehouse data`: parse options, call `tunehouse.data.synth`, print each
curation stage's counts (or `--json`). The generator is any OpenAI-compatible endpoint; by default
the local tunehouse server and its shipped base model. Ctrl-C (or a kill) loses nothing received:
replies are cached as they arrive, and the same command run again resumes.
"""

from __future__ import annotations

import codecs
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from tunehouse.cli.client import DEFAULT_BASE_URL, NO_KEY, ApiKey, BaseUrl, fail
from tunehouse.config import DEFAULT_BASE_MODEL
from tunehouse.errors import TunehouseError

if TYPE_CHECKING:  # the synth package (openai, datasketch) is imported when a command runs, not at start-up
    from tunehouse.data.synth.client import Usage
    from tunehouse.data.synth.tally import Tally

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

Model = Annotated[str, typer.Option("--model", "-m", help="The generator model, as the endpoint names it.")]
Concurrency = Annotated[int, typer.Option(min=1, max=64, help="Requests in flight at once.")]
Seed = Annotated[int, typer.Option(help="Same inputs, options and seed: the same requests (and cache hits).")]
Temperature = Annotated[float, typer.Option(min=0.0, max=2.0, help="Sampling temperature of the generator.")]
MaxTokens = Annotated[
    int,
    typer.Option(min=1, help="Ceiling on any reply, in tokens (each task asks for what it needs below it)."),
]
Timeout = Annotated[float, typer.Option(min=1.0, help="Seconds to wait for one reply.")]
Retries = Annotated[
    int, typer.Option(min=0, max=10, help="Further tries after a server error, a timeout or an unreadable reply.")
]
PromptFile = Annotated[
    Path | None, typer.Option(help="TOML prompts replacing the defaults (see --print-prompts).", show_default=False)
]
CacheFile = Annotated[
    Path | None,
    typer.Option(help="Reply cache (default: $TUNEHOUSE_HOME/synth/replies.sqlite3).", show_default=False),
]
MaxPairTokens = Annotated[int, typer.Option(min=1, help="Drop pairs longer than this, in the generator's tokens.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the report as JSON.")]


def _unescape(value: str) -> str:
    r"""Let users type separators as `'\n\n###\n\n'` on a shell line."""
    return codecs.decode(value, "unicode_escape")


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """A progress bar with ETA on stderr, in a terminal; None otherwise."""
    if not enabled or not err_console.is_terminal:
        yield None
        return
    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        "requests",
        TimeElapsedColumn(),
        "eta",
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console) as bar:
        tasks: dict[str, Any] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done, total=total)

        yield update


@contextmanager
def _run_errors(cache_path: Path) -> Iterator[None]:
    try:
        yield
    except TunehouseError as exc:
        fail(exc.message)
    except KeyboardInterrupt:
        err_console.print(
            f"Interrupted. Every reply received is kept in {cache_path}; run the same command again to resume."
        )
        raise typer.Exit(130) from None


def _print_stages(tally: Tally) -> None:
    table = Table("stage", "kept", "dropped", "why (first examples)", title="curation", show_lines=False)
    for stage in tally.stages.values():
        why = "; ".join(
            f"{count} {reason}"
            + (f": {', '.join(stage.samples.get(reason, [])[:2])}" if stage.samples.get(reason) else "")
            for reason, count in stage.dropped.most_common()
        )
        table.add_row(escape(stage.name), str(stage.kept), str(stage.n_dropped), escape(why))
    console.print(table)


def _print_usage(usage: Usage, seconds: float, label: str = "generator") -> None:
    console.print(
        f"{label}: {usage.requests} requests sent ({usage.failed} failed), {usage.cached} replies from the cache, "
        f"{usage.prompt_tokens:,} prompt and {usage.completion_tokens:,} completion tokens; {seconds:.1f} s"
    )


def synth_command(
    documents: Annotated[
        list[Path] | None, typer.Argument(help="Files (.txt, .md, .html, .pdf) or folders of them.", show_default=False)
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="The JSONL file to write.", show_default=False)
    ] = None,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    model: Model = DEFAULT_BASE_MODEL,
    per_chunk: Annotated[int, typer.Option(min=1, max=20, help="Questions asked per passage.")] = 3,
    chunk_tokens: Annotated[int, typer.Option(min=16, help="Passage length, in the generator's tokens.")] = 256,
    overlap_tokens: Annotated[int, typer.Option(min=0, help="Tokens a passage shares with the next.")] = 32,
    format: Annotated[str, typer.Option("--format", help="chat, or legacy prompt/completion.")] = "chat",
    system: Annotated[str | None, typer.Option(help="System message of every chat example.")] = None,
    separator: Annotated[str, typer.Option(help="Legacy: what every prompt ends with.")] = r"\n\n###\n\n",
    stop: Annotated[str, typer.Option(help="Legacy: what every completion ends with.")] = " END",
    concurrency: Concurrency = 4,
    seed: Seed = 0,
    temperature: Temperature = 0.7,
    max_tokens: MaxTokens = 256,
    timeout: Timeout = 120.0,
    retries: Retries = 3,
    min_support: Annotated[
        float, typer.Option(help="Share of an answer's content words that must occur in its passage.")
    ] = 0.6,
    dedup_threshold: Annotated[
        float, typer.Option(help="Jaccard similarity of word pairs from which a pair repeats an earlier one.")
    ] = 0.8,
    max_pair_tokens: MaxPairTokens = 512,
    judge_model: Annotated[
        str | None, typer.Option(help="A model (same endpoint) that rates each pair 1-10.", show_default=False)
    ] = None,
    judge_threshold: Annotated[int, typer.Option(min=1, max=10, help="Lowest judge rating kept.")] = 7,
    prompt_file: PromptFile = None,
    print_prompts: Annotated[bool, typer.Option(help="Print the default prompts as a TOML prompt file.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Read and chunk the documents; estimate requests and tokens.")] = False,
    cache: CacheFile = None,
    as_json: AsJson = False,
) -> None:
    """Questions and grounded answers from your documents, curated, as training JSONL with provenance."""
    from tunehouse.data.synth import (
        Endpoint,
        ExampleFormat,
        ReplyCache,
        Sampling,
        SynthOptions,
        load_prompts,
        prompts_toml,
        provenance_path,
        synthesize,
    )
    from tunehouse.data.synth.cache import default_cache_path

    if print_prompts:
        sys.stdout.write(prompts_toml())
        return
    if not documents:
        fail("Name at least one document or folder to synthesize from.")
    if out is None and not dry_run:
        fail("Name the file to write with --out (or estimate first with --dry-run).")
    cache_path = cache or default_cache_path()
    with _run_errors(cache_path):
        options = SynthOptions(
            per_chunk=per_chunk,
            chunk_tokens=chunk_tokens,
            overlap_tokens=overlap_tokens,
            seed=seed,
            concurrency=concurrency,
            min_support=min_support,
            dedup_threshold=dedup_threshold,
            max_pair_tokens=max_pair_tokens,
            judge_model=judge_model,
            judge_threshold=judge_threshold,
        )
        example_format = ExampleFormat(format, system, _unescape(separator), _unescape(stop))
        endpoint = Endpoint(base_url, api_key or NO_KEY, model, timeout=timeout, retries=retries)
        prompts = load_prompts(prompt_file)
        with _progress(not as_json) as progress:
            report = synthesize(
                documents,
                out,
                endpoint,
                prompts,
                options,
                example_format,
                ReplyCache(cache_path),
                Sampling(temperature, max_tokens),
                progress,
                dry_run,
            )
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
        raise typer.Exit(0 if dry_run or report.n_written else 1)
    _print_stages(report.tally)
    console.print(f"{report.n_documents} documents, {report.n_chunks} passages ({report.tokens})")
    if dry_run and report.estimate is not None:
        e = report.estimate
        console.print(
            f"estimate: at most {e.requests:,} requests, {e.prompt_tokens:,} prompt tokens and "
            f"{e.max_completion_tokens:,} completion tokens; no retries counted"
        )
        return
    _print_usage(report.usage, report.seconds)
    if report.judge_usage is not None:
        _print_usage(report.judge_usage, report.seconds, "judge")
    if out is not None and report.n_written:
        console.print(f"wrote {report.n_written} pairs to {out}; provenance in {provenance_path(out)}")
    else:
        fail("No pair survived curation; see the stages above. Nothing was written.")


def augment_command(
    file: Annotated[Path, typer.Argument(help="A chat or prompt/completion JSONL file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The JSONL file to write.")],
    paraphrases: Annotated[int, typer.Option(min=1, max=20, help="Rephrasings asked per example.")] = 3,
    rewrite_context: Annotated[
        bool, typer.Option(help="Also rewrite the context passage (the user turn's paragraphs before its last).")
    ] = False,
    min_similarity: Annotated[
        float, typer.Option(help="Share of the original question's content words a rephrasing must keep.")
    ] = 0.5,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    model: Model = DEFAULT_BASE_MODEL,
    concurrency: Concurrency = 4,
    seed: Seed = 0,
    temperature: Temperature = 0.7,
    max_tokens: MaxTokens = 256,
    timeout: Timeout = 120.0,
    retries: Retries = 3,
    max_pair_tokens: MaxPairTokens = 512,
    prompt_file: PromptFile = None,
    cache: CacheFile = None,
    as_json: AsJson = False,
) -> None:
    """Rephrase each example's question N times, keeping its answer; originals kept, groups marked."""
    from tunehouse.data.synth import AugmentOptions, Endpoint, ReplyCache, Sampling, augment, load_prompts
    from tunehouse.data.synth.cache import default_cache_path

    cache_path = cache or default_cache_path()
    with _run_errors(cache_path):
        options = AugmentOptions(
            paraphrases=paraphrases,
            rewrite_context=rewrite_context,
            seed=seed,
            concurrency=concurrency,
            min_similarity=min_similarity,
            max_pair_tokens=max_pair_tokens,
        )
        endpoint = Endpoint(base_url, api_key or NO_KEY, model, timeout=timeout, retries=retries)
        with _progress(not as_json) as progress:
            report = augment(
                file,
                out,
                endpoint,
                load_prompts(prompt_file),
                options,
                ReplyCache(cache_path),
                Sampling(temperature, max_tokens),
                progress,
            )
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
        return
    _print_stages(report.tally)
    _print_usage(report.usage, report.seconds)
    console.print(
        f"wrote {report.n_written} examples to {out}: {report.n_examples} originals and "
        f"{report.n_paraphrases} rephrasings, each example's sharing its `group`"
    )
