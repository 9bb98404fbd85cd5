"""Reading documents: four formats, folders, and files with no text, which are drops that say why."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.data.synth.conftest import ARTICLES
from tunehouse.data.synth.documents import Unreadable, find_documents, load_documents, read_document
from tunehouse.data.synth.tally import Stage
from tunehouse.errors import InvalidRequest


def test_each_format_gives_its_text(articles: Path) -> None:
    kinds = {p.name: read_document(p) for p in find_documents([articles])}
    assert {name: doc.kind for name, doc in kinds.items()} == {
        "canal.pdf": "pdf",
        "lighthouse.txt": "text",
        "observatory.html": "html",
        "orchard.md": "markdown",
    }
    assert kinds["lighthouse.txt"].text == (articles / "lighthouse.txt").read_text()
    html = kinds["observatory.html"].text
    assert ARTICLES["observatory"] in html and "tracking" not in html and "Copyright" not in html
    assert " ".join(kinds["canal.pdf"].text.split()).endswith(ARTICLES["canal"])


def test_text_keeps_its_own_characters_so_spans_index_the_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes("\ufeffCafé on the quay.\r\nOpen at dawn.\r\n".encode())
    text = read_document(path).text
    assert text == "Café on the quay.\r\nOpen at dawn.\r\n"
    assert text == path.open(encoding="utf-8-sig", newline="").read()


def test_folders_are_walked_in_order_without_hidden_files(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / ".git").mkdir()
    for name in ("b/two.md", "a.txt", ".git/config", ".hidden.txt"):
        (tmp_path / name).write_text("Some text.")
    assert [p.relative_to(tmp_path).as_posix() for p in find_documents([tmp_path])] == ["a.txt", "b/two.md"]
    with pytest.raises(InvalidRequest, match="No such file or folder"):
        list(find_documents([tmp_path / "missing"]))


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.txt", b"   \n", "empty"),
        ("photo.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "binary file"),
        ("latin1.txt", "caf\u00e9".encode("latin-1"), "binary file or not UTF-8 (byte 3)"),
        ("page.html", b"<html><body><script>x = 1</script></body></html>", "empty"),
        ("fake.pdf", b"%PDF-1.7\nnot really", "unreadable PDF"),
        ("renamed.txt", b"%PDF-1.7\nnot really", "unreadable PDF"),
    ],
)
def test_files_without_usable_text_say_why(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(Unreadable, match=r"^" + reason.replace("(", r"\(").replace(")", r"\)") + "$"):
        read_document(path)


def test_load_counts_drops_by_name_and_needs_one_document(articles: Path, tmp_path: Path) -> None:
    (articles / "empty.txt").write_text("")
    stage = Stage("documents")
    assert len(load_documents([articles], stage)) == 4
    assert (stage.kept, dict(stage.dropped), stage.samples) == (
        4,
        {"empty": 1},
        {"empty": [str(articles / "empty.txt")]},
    )
    with pytest.raises(InvalidRequest, match=r"No document with text to synthesize from \(1 dropped: 1 empty"):
        load_documents([articles / "empty.txt"], Stage("documents"))
