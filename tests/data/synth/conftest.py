"""Fixtures for data synthesis: a counting local generator server and a folder of articles in four formats."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.data.synth.canned import CannedGenerator

ARTICLES = {
    "lighthouse": (
        "The Harbour Light stands on Gull Point at the mouth of the bay. It was lit for the first time in "
        "1874 by the keeper Thomas Avery. Its lamp burned whale oil until 1902, when paraffin replaced it. "
        "The tower is made of granite blocks brought by barge from the Dunmore quarry. Storms in 1911 "
        "cracked the lantern glass, and the town paid for new panes from Glasgow."
    ),
    "orchard": (
        "The Westfield orchard grows forty kinds of apple on a south-facing slope. Its oldest tree is a "
        "Pearmain planted in 1820 by Ada Westfield. Cider pressing starts every year in the second week "
        "of October. The orchard's honey comes from twelve hives kept beside the stream. Visitors may pick "
        "their own apples on Saturdays during the harvest."
    ),
    "observatory": (
        "The Kestrel Hill observatory houses a refracting telescope with a lens of sixty centimetres. "
        "Astronomer Lena Marsh discovered the comet Marsh-Ito there in 1968. The dome turns on iron wheels "
        "driven by a hand crank. School groups visit on clear Tuesday evenings. A small museum beside the "
        "dome shows the original star charts."
    ),
    "canal": (
        "The Millbrook canal was dug between 1790 and 1796 to carry coal to the river port. It has "
        "seventeen locks over a length of twenty-two miles. Horses towed the narrowboats along the "
        "towpath until the 1930s. The canal trust restored the aqueduct at Hayle in 2004. Today the "
        "water is used by rowing clubs and anglers."
    ),
}


@pytest.fixture
def canned() -> Iterator[CannedGenerator]:
    generator = CannedGenerator().start()
    try:
        yield generator
    finally:
        generator.stop()


def write_pdf(path: Path, title: str, text: str) -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    pdf.multi_cell(0, 8, f"{title}\n\n{text}")
    pdf.output(str(path))
    return path


@pytest.fixture
def articles(tmp_path: Path) -> Path:
    """A folder with one article each as .txt, .md, .html and .pdf."""
    folder = tmp_path / "articles"
    folder.mkdir()
    (folder / "lighthouse.txt").write_text(ARTICLES["lighthouse"] + "\n")
    (folder / "orchard.md").write_text("# The Westfield orchard\n\n" + ARTICLES["orchard"] + "\n")
    (folder / "observatory.html").write_text(
        "<html><head><title>Kestrel Hill</title><script>var tracking = 1;</script></head><body>"
        "<nav><a href='/'>Home</a> | <a href='/about'>About</a></nav>"
        f"<article><h1>The Kestrel Hill observatory</h1><p>{ARTICLES['observatory']}</p></article>"
        "<footer>Copyright the observatory society</footer></body></html>"
    )
    write_pdf(folder / "canal.pdf", "The Millbrook canal", ARTICLES["canal"])
    return folder
