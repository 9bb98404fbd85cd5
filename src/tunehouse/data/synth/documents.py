"""Documents to synthesize from: plain text, Markdown, HTML and PDF files, or folders of them.

A document's `text` is what every character span in the provenance sidecar indexes: the file decoded
as UTF-8 for text and Markdown (newlines kept as they are, so `open(path, newline="").read()` gives
the same offsets), the main text trafilatura extracts for HTML, and pypdf's text of each page,
joined by blank lines, for PDF. A file that holds no usable text (empty, binary, an unreadable or
scanned PDF) is a counted, named drop, never a crash; a path that does not exist is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tunehouse.data.synth.tally import Stage
from tunehouse.errors import InvalidRequest

KINDS = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown"}
KINDS |= {".html": "html", ".htm": "html", ".xhtml": "html", ".pdf": "pdf"}
SNIFF_BYTES = 8192


@dataclass(frozen=True)
class Document:
    path: Path
    kind: str  # text | markdown | html | pdf
    text: str


class Unreadable(Exception):
    """A file that holds no text we can use; the message is the drop's reason."""


def find_documents(paths: Sequence[str | Path]) -> Iterator[Path]:
    """The files named, and the files under the folders named (sorted, hidden ones skipped)."""
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise InvalidRequest(f"No such file or folder: {path}", param="documents")
        if path.is_dir():
            yield from sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        else:
            yield path


def _decode(raw: bytes) -> str:
    if b"\x00" in raw[:SNIFF_BYTES]:
        raise Unreadable("binary file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Unreadable(f"binary file or not UTF-8 (byte {exc.start})") from exc


def _html_text(raw: bytes) -> str:
    import trafilatura

    html = _decode(raw)
    # The main text of an article page; a page too small for trafilatura's heuristics gives all its text.
    return trafilatura.extract(html, include_comments=False, favor_recall=True) or trafilatura.html2txt(html) or ""


def _pdf_text(path: Path) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings about odd PDFs are not the user's business
    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            raise Unreadable("encrypted PDF")
        return "\n\n".join((page.extract_text() or "").strip() for page in reader.pages).strip()
    except (PyPdfError, ValueError, KeyError, OSError) as exc:
        raise Unreadable("unreadable PDF") from exc


def read_document(path: Path) -> Document:
    """The document's text; raises Unreadable saying why there is none."""
    kind = KINDS.get(path.suffix.lower(), "text")
    raw = b"" if kind == "pdf" else path.read_bytes()
    if raw.startswith(b"%PDF-"):  # a PDF by its content, whatever its name
        kind = "pdf"
    if kind == "pdf":
        text = _pdf_text(path)
    elif kind == "html":
        text = _html_text(raw)
    else:
        text = _decode(raw)
    if not text.strip():
        raise Unreadable("no text (empty, or a scanned PDF)" if kind == "pdf" else "empty")
    return Document(path, kind, text)


def load_documents(paths: Sequence[str | Path], stage: Stage) -> list[Document]:
    """Every readable document under `paths`; each unreadable one is counted in `stage` by name."""
    documents = []
    for path in find_documents(paths):
        try:
            documents.append(read_document(path))
            stage.keep()
        except Unreadable as exc:
            stage.drop(str(exc), str(path))
    if not documents:
        raise InvalidRequest(
            "No document with text to synthesize from" + (f" ({stage.summary()})." if stage.dropped else "."),
            param="documents",
        )
    return documents
