"""An HTML page's figures follow its image files (bt13b finding 6), and image links that cannot be read are
reported (finding 8)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from cli_helpers import run
from format_samples import chart

from corpora.files import iter_path
from heterag.collections.collection import collection_documents


@pytest.fixture()
def site(tmp_path) -> Path:
    folder = tmp_path / "live"
    (folder / "bilder").mkdir(parents=True)
    chart(1).save(folder / "bilder" / "moraine map.png")
    chart(2).save(folder / "bilder" / "hydrograph.png")
    (folder / "page.html").write_text(
        "<html><body><article><h1>Moraine notes</h1><p>The moraine was mapped in August.</p>"
        '<figure><img src="bilder/moraine%20map.png"><figcaption>Figure 1: Map of the moraine ridges.</figcaption>'
        '</figure><p>Discharge peaks in July.</p><img src="bilder/hydrograph.png" alt="Hydrograph of the outlet stream">'
        "</article></body></html>", encoding="utf-8")
    return folder


@pytest.mark.parametrize("sync", [True, False])
def test_a_deleted_image_file_takes_its_html_figure_with_it(capsys, site, sync):
    code, out, err = run(capsys, "ingest", str(site), "--collection", "lv", "--store", "faiss")
    assert code == 0, err
    images = {d.id: d.image for d in collection_documents("lv")}
    assert set(images) == {"page.html", "page.html#figure-1", "page.html#figure-2"}
    (site / "bilder" / "hydrograph.png").unlink()  # the page's last figure: no other figure is renumbered
    code, out, err = run(capsys, "ingest", str(site), "--collection", "lv", *(["--sync"] if sync else []))
    assert code == 0, err
    # the hydrograph's figure was kept, and cited, with the old image; now the page shows the map only
    left = {d.id: d.image for d in collection_documents("lv")}
    assert left == {"page.html": images["page.html"], "page.html#figure-1": images["page.html#figure-1"]}, left
    code, out, err = run(capsys, "ingest", str(site), "--collection", "lv")  # and then it is a no-op again
    assert code == 0 and "0 documents written" in out, out


def test_a_changed_image_file_replaces_its_figure_and_an_unchanged_page_stays_unchanged(capsys, site):
    assert run(capsys, "ingest", str(site), "--collection", "lv", "--store", "faiss")[0] == 0
    code, out, _ = run(capsys, "ingest", str(site), "--collection", "lv")
    assert code == 0 and "0 documents written" in out, out
    chart(9).save(site / "bilder" / "hydrograph.png")
    before = {d.id: d.image for d in collection_documents("lv")}
    code, out, _ = run(capsys, "ingest", str(site), "--collection", "lv")
    after = {d.id: d.image for d in collection_documents("lv")}
    assert code == 0 and set(after) == set(before)
    assert after["page.html#figure-2"] != before["page.html#figure-2"]


def test_missing_and_outside_folder_image_links_are_reported(site, caplog):
    chart(3).save(site.parent / "outside.png")
    (site / "page.html").write_text('<html><body><p>Field notes.</p><img src="../outside.png" alt="o">'
                                    '<img src="bilder/missing.png" alt="m"></body></html>', encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="corpora.readers.html"):
        docs = [d for d in iter_path(site) if getattr(d, "id", "") == "page.html"]
    assert len(docs) == 1
    notes = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("../outside.png" in m and "outside the ingested folder" in m for m in notes), notes
    assert any("bilder/missing.png" in m and "not found" in m for m in notes), notes
