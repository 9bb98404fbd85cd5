"""`tunehouse data synth` as a user runs it, against a real local generator server that counts requests."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
from fpdf import FPDF
from typer.testing import CliRunner, Result

from tests.data.synth.canned import CannedGenerator
from tunehouse.cli.main import app
from tunehouse.data.synth.documents import read_document

runner = CliRunner()


def synth(canned: CannedGenerator, *args: str) -> Result:
    return runner.invoke(app, ["data", "synth", "--base-url", canned.base_url, "--model", "canned", *args])


def lines(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_a_folder_of_four_formats_becomes_a_valid_chat_file_with_provenance(
    canned: CannedGenerator, articles: Path, tmp_path: Path, home: Path
) -> None:
    out = tmp_path / "qa.jsonl"
    result = synth(canned, str(articles), "-o", str(out), "--chunk-tokens", "48", "--system", "You know the town.")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    examples, provenance = lines(out), lines(tmp_path / "qa.provenance.jsonl")
    assert len(examples) == len(provenance) >= 12
    assert f"wrote {len(examples)} pairs to {out}" in result.output
    assert runner.invoke(app, ["data", "validate", str(out)]).exit_code == 0
    assert {Path(p["document"]).suffix for p in provenance} == {".txt", ".md", ".html", ".pdf"}
    for line, (example, record) in enumerate(zip(examples, provenance, strict=True), 1):
        system, user, assistant = example["messages"]
        assert system == {"role": "system", "content": "You know the town."}
        assert record["line"] == line and record["model"] == "canned"
        text = read_document(Path(record["document"])).text
        start, end = record["span"]
        assert 0 <= start < end <= len(text)
        assert assistant["content"] in " ".join(text[start:end].split())  # the answer is quoted from its passage
    # .txt and .md spans index the file's own characters
    for record in provenance:
        if record["kind"] in ("text", "markdown"):
            raw = Path(record["document"]).read_text(encoding="utf-8")
            assert (
                raw[record["span"][0] : record["span"][1]]
                == read_document(Path(record["document"])).text[record["span"][0] : record["span"][1]]
            )


def test_legacy_format_is_written_as_seed_003_writes_it(
    canned: CannedGenerator, articles: Path, tmp_path: Path, home: Path
) -> None:
    out = tmp_path / "legacy.jsonl"
    result = synth(
        canned, str(articles), "-o", str(out), "--format", "legacy", "--separator", r"\n\n###\n\n", "--stop", " END"
    )
    assert result.exit_code == 0, result.output
    examples = lines(out)
    assert examples and all(set(e) == {"prompt", "completion"} for e in examples)
    for example in examples:
        assert example["prompt"].endswith("?\n\n###\n\n")
        assert example["completion"].startswith(" ") and example["completion"].endswith(" END")
    validated = runner.invoke(app, ["data", "validate", str(out), "--json"])
    report = json.loads(validated.stdout)
    assert validated.exit_code == 0 and report["format"] == "completion"
    assert not {"missing_separator", "completion_missing_leading_whitespace", "missing_stop_sequence"} & set(
        report["counts"]
    )


def test_a_second_run_asks_nothing_and_writes_the_same_file(
    canned: CannedGenerator, articles: Path, tmp_path: Path, home: Path
) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert synth(canned, str(articles), "-o", str(first)).exit_code == 0
    asked = len(canned.requests)
    result = synth(canned, str(articles), "-o", str(second))
    assert result.exit_code == 0, result.output
    assert len(canned.requests) == asked
    assert f"0 requests sent (0 failed), {asked} replies from the cache" in result.output
    assert first.read_bytes() == second.read_bytes()
    other_seed = synth(canned, str(articles), "-o", str(second), "--seed", "1")
    assert other_seed.exit_code == 0 and len(canned.requests) == 2 * asked  # the seed is part of every request


def test_malformed_replies_server_errors_and_timeouts_are_counted_named_drops(
    canned: CannedGenerator, articles: Path, tmp_path: Path, home: Path
) -> None:
    (articles / "garbled.txt").write_text("GARBLE. The generator cannot make sense of this passage at all.")
    (articles / "broken.txt").write_text("BROKEN. The generator fails with a server error on this passage.")
    (articles / "slow.txt").write_text("SLOW. The generator takes far too long to answer this passage.")
    out = tmp_path / "qa.jsonl"
    result = synth(canned, str(articles), "-o", str(out), "--retries", "1", "--timeout", "1.5", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    questions = next(s for s in report["stages"] if s["stage"] == "question requests (passages)")
    dropped = questions["dropped"]
    assert dropped["malformed reply (no numbered questions in the reply)"] == 1
    assert dropped["server error 500"] == 1
    assert dropped["timed out"] == 1
    assert questions["samples"]["timed out"] == ["slow.txt passage 1"]
    assert report["usage"]["failed"] == 4  # 500 twice, timeout twice: each retried once
    for marker in ("GARBLE", "BROKEN", "SLOW"):  # one request and one retry each, no more
        assert sum(marker in body["messages"][-1]["content"] for body in canned.requests) == 2
    assert runner.invoke(app, ["data", "validate", str(out)]).exit_code == 0
    assert len(lines(out)) == report["written"] == report["stages"][-1]["kept"]  # every pair that survived
    documents = {Path(p["document"]).name for p in lines(tmp_path / "qa.provenance.jsonl")}
    assert documents == {"lighthouse.txt", "orchard.md", "observatory.html", "canal.pdf"}


def test_empty_and_binary_documents_are_named_drops_and_no_text_at_all_is_an_error(
    canned: CannedGenerator, articles: Path, tmp_path: Path, home: Path
) -> None:
    (articles / "empty.md").write_text("  \n\n")
    (articles / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (articles / "broken.pdf").write_bytes(b"%PDF-1.4\n%garbage that is no PDF\n")
    scan = FPDF()
    scan.add_page()  # a page with no text layer, as a scanner makes
    scan.output(str(articles / "scan.pdf"))
    result = synth(canned, str(articles), "-o", str(tmp_path / "qa.jsonl"), "--json")
    assert result.exit_code == 0, result.output
    documents = json.loads(result.stdout)["stages"][0]
    assert (documents["stage"], documents["kept"]) == ("documents", 4)
    assert documents["dropped"] == {
        "binary file": 1,
        "empty": 1,
        "unreadable PDF": 1,
        "no text (empty, or a scanned PDF)": 1,
    }
    assert documents["samples"]["binary file"] == [str(articles / "image.png")]
    assert documents["samples"]["empty"] == [str(articles / "empty.md")]
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    (nothing / "empty.txt").write_text("")
    failed = synth(canned, str(nothing), "-o", str(tmp_path / "none.jsonl"))
    assert failed.exit_code == 1
    assert "No document with text to synthesize from (1 dropped: 1 empty" in failed.output
    missing = synth(canned, str(tmp_path / "missing"), "-o", str(tmp_path / "none.jsonl"))
    assert missing.exit_code == 1 and "No such file or folder" in missing.output
    assert "Traceback" not in failed.output + missing.output
    assert not (tmp_path / "none.jsonl").exists()


def test_dry_run_estimates_without_asking(canned: CannedGenerator, articles: Path, home: Path) -> None:
    result = synth(canned, str(articles), "--dry-run", "--chunk-tokens", "48", "--per-chunk", "2", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["estimate"]["requests"] == report["chunks"] * 3
    assert report["estimate"]["prompt_tokens"] > report["chunks"] * 100
    assert report["tokens"].startswith("approximate")  # `canned` is not a model tunehouse holds
    assert canned.requests == []


def test_a_judge_model_rates_every_pair_and_an_unknown_endpoint_is_a_clear_error(
    canned: CannedGenerator, articles: Path, tmp_path: Path, home: Path
) -> None:
    out = tmp_path / "judged.jsonl"
    result = synth(canned, str(articles), "-o", str(out), "--judge-model", "canned-judge", "--judge-threshold", "8")
    assert result.exit_code == 0, result.output
    judged = [b for b in canned.requests if b["model"] == "canned-judge"]
    assert len(judged) == len(lines(out)) and all(b["temperature"] == 0.0 for b in judged)
    assert all(p["judge_rating"] == 8 for p in lines(tmp_path / "judged.provenance.jsonl"))
    strict = synth(canned, str(articles), "-o", str(out), "--judge-model", "canned-judge", "--judge-threshold", "9")
    assert strict.exit_code == 1 and "rated below 9" in strict.output
    unreachable = runner.invoke(
        app, ["data", "synth", str(articles), "-o", str(out), "--base-url", "http://127.0.0.1:9/v1", "--model", "x"]
    )
    assert unreachable.exit_code == 1
    assert "Cannot reach the generator at http://127.0.0.1:9/v1" in unreachable.output
    assert "Traceback" not in unreachable.output


def test_prompts_can_be_printed_edited_and_passed_back(
    canned: CannedGenerator, articles: Path, tmp_path: Path, home: Path
) -> None:
    printed = runner.invoke(app, ["data", "synth", "--print-prompts"])
    assert printed.exit_code == 0 and "[questions]" in printed.stdout
    prompt_file = tmp_path / "prompts.toml"
    prompt_file.write_text(
        printed.stdout.replace(
            "Write $n questions about this passage.", "Write $n questions about this passage. Be brief."
        )
    )
    result = synth(canned, str(articles), "-o", str(tmp_path / "qa.jsonl"), "--prompt-file", str(prompt_file))
    assert result.exit_code == 0, result.output
    assert any("Be brief." in b["messages"][-1]["content"] for b in canned.requests)
    prompt_file.write_text("[questions]\nuser = 'Tell me about $topic'\n")
    bad = synth(canned, str(articles), "-o", str(tmp_path / "qa.jsonl"), "--prompt-file", str(prompt_file))
    assert bad.exit_code == 1
    assert "[questions].user uses $topic; questions prompts know $n, $passage." in bad.output
