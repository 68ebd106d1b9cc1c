"""Citations say where a source comes from in the user's terms: file, page, section, figure (issue 13)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import run
from format_samples import FIGURE_CAPTIONS, write_html, write_pdf

from heterag.core.results import Answer, Hit, SourceRef, format_citation
from heterag.generators.prompting import citation_for
from heterag.ui import render


def hit(**kw) -> Hit:
    base = dict(chunk_id="c", doc_id="d", text="Some text.", view="", score=0.5)
    return Hit(**{**base, **kw})


def from_file(rel: str) -> dict[str, str]:
    """The metadata of a document read from the file ``rel`` under /data."""
    return {"source": rel, "source_path": f"/data/{rel}"}


def test_source_ref_reads_file_page_section_and_figure():
    page = hit(doc_id="paper.pdf", title="Tidal Forces", heading=("p. 4",), metadata=from_file("papers/paper.pdf"))
    assert page.where == SourceRef(source="papers/paper.pdf", title="Tidal Forces", page=4)
    assert page.where.label() == 'papers/paper.pdf ("Tidal Forces"), p. 4'
    ocr = hit(heading=("p. 2 (OCR)",), metadata=from_file("scan.pdf"), title="scan")
    assert ocr.where.label() == "scan.pdf, p. 2"  # a title that is only the file name is not repeated
    figure = hit(doc_id="paper.pdf#figure-2", title="Tidal Forces, figure 2", heading=("Figure 2",),
                 metadata={**from_file("paper.pdf"), "page": 3, "figure": 2}, image="/home/x/images/70/70d9.png")
    assert figure.where.label() == 'paper.pdf ("Tidal Forces"), p. 3, figure 2'
    html = hit(title="Estuary Field Guide", heading=("Estuary Field Guide", "Sampling", "Timing"),
               metadata=from_file("guide/field-guide.html"))
    assert html.where.section == "Sampling > Timing"  # the h1 repeating the title is left out
    assert html.where.label() == 'guide/field-guide.html ("Estuary Field Guide"), Sampling > Timing'
    plain = hit(doc_id="q17", title="Python reference: with", heading=("Context managers",),
                metadata={"source": "pydoc_data.topics"})  # a data set, not a file: named by the title
    assert plain.where.label("q17") == "Python reference: with, Context managers" and plain.where.source == ""
    assert hit(doc_id="q18").where.label("q18") == "q18"


def test_a_citation_line_names_the_file_not_the_internal_image_copy():
    figure = hit(doc_id="paper.pdf#figure-2", title="Tidal Forces, figure 2", heading=("Figure 2",), score=0.748,
                 text="Figure 2: Salinity   profile.", metadata={**from_file("paper.pdf"), "page": 2, "figure": 2},
                 image="/home/x/collections/c/images/70/70d9.png")
    line = format_citation(citation_for(1, figure))
    assert line == '[1] paper.pdf ("Tidal Forces"), p. 2, figure 2 (score 0.748): Figure 2: Salinity profile.'
    alone = hit(doc_id="harbour.png", metadata=from_file("pics/harbour.png"), image="/c/images/1/1a.png", text="",
                score=1.0)
    assert format_citation(citation_for(2, alone)) == "[2] pics/harbour.png (score 1.000): (image without text)"
    stray = hit(doc_id="img-7", image="/c/images/1/1b.png", text="", score=1.0)  # no file to name: its stored copy
    assert format_citation(citation_for(3, stray)) == "[3] img-7 (score 1.000): image /c/images/1/1b.png; (image without text)"


def test_the_app_shows_the_same_citation_and_keeps_source_text_as_text():
    evil = hit(doc_id="x.html", title="<b>Guide</b>", heading=("p. 3",), text="<script>alert(1)</script>",
               metadata=from_file("docs/x<1>.html"))
    answer = Answer(text="See [1].", citations=(citation_for(1, evil),), hits=(evil,))
    page = render.sources_html(answer)
    assert render.text(evil.where.label("x.html")) in page and "<script>" not in page and "<b>Guide" not in page
    (row,) = render.sources_json(answer)
    assert row["source"] == "docs/x<1>.html" and row["page"] == 3 and row["label"] == evil.where.label()


@pytest.fixture(scope="module")
def papers(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cite") / "kb"
    (root / "guides").mkdir(parents=True)
    write_pdf(root / "estuary-paper.pdf")
    write_html(root / "guides" / "field-guide.html")
    return root


def test_ask_cites_file_page_and_figure_in_text_and_json(capsys, papers, heterag_home):
    assert run(capsys, "ingest", str(papers), "--collection", "kb")[0] == 0
    question = "What does the salinity profile along the estuary at high water show?"
    code, out, err = run(capsys, "ask", question, "--collection", "kb")
    assert code == 0, err
    sources = out.split("Sources:")[1].strip().splitlines()
    first = sources[0].strip()
    assert first.startswith('[1] estuary-paper.pdf ("Tidal Forces in Coastal Estuaries"), p. 2, figure 2 (score ')
    assert first.endswith(FIGURE_CAPTIONS[1]) and "images/" not in out and str(heterag_home) not in out
    code, out, _ = run(capsys, "ask", question, "--collection", "kb", "--json")
    top = json.loads(out)["sources"][0]
    assert (top["source"], top["page"], top["figure"], top["section"]) == ("estuary-paper.pdf", 2, 2, "")
    assert Path(top["image"]).is_file()  # the stored copy stays available to programs
    code, out, _ = run(capsys, "ask", "When should conductivity casts be taken?", "--collection", "kb", "--json")
    html = next(s for s in json.loads(out)["retrieved"] if "Take conductivity casts" in s["text"])
    assert (html["source"], html["page"], html["section"]) == ("guides/field-guide.html", None, "Sampling > Timing")
    text_hits = [s for s in json.loads(out)["retrieved"] if s["doc_id"] == "estuary-paper.pdf"]
    assert text_hits and all(isinstance(s["page"], int) and f"p. {s['page']}" in s["view"] for s in text_hits)

