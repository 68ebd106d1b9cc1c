"""Retrieval views: naive, heterag (multi-granular context) and late chunking."""

from __future__ import annotations

import numpy as np
import pytest

from heterag import (
    Document,
    InvalidInputError,
    Section,
    UnknownNameError,
    chunk_document,
    make_view,
)

SENTENCES = [f"Sentence number {i} talks about topic {i % 7} in some detail." for i in range(60)]


@pytest.fixture(scope="module")
def chunked(encoder):
    doc = Document.create(
        sections=[Section(" ".join(SENTENCES[:30]), ("Methods",)), Section(" ".join(SENTENCES[30:]), ("Results", "Main"))],
        title="A study of topics",
    )
    return chunk_document(doc, encoder.tokenize, 32)


def test_naive_view_is_the_chunk(chunked, encoder):
    texts, vecs = make_view("naive").embed([chunked], encoder)
    assert texts == [c.text for c in chunked.chunks]
    assert vecs.shape == (len(chunked.chunks), encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_heterag_view_holds_title_heading_and_neighbours(chunked, encoder):
    view = make_view("heterag", neighbours=1)
    texts = view.texts(chunked)
    ch = chunked.chunks
    mid = len(ch) // 2
    assert texts[mid].startswith("A study of topics")
    assert " > ".join(ch[mid].heading) in texts[mid]
    flat = " ".join(texts[mid].split())
    for j in (mid - 1, mid, mid + 1):
        assert " ".join(ch[j].text.split()) in flat
    assert " ".join(ch[mid + 2].text.split()) not in flat
    # first chunk has no left neighbour; the view still holds the chunk and its right neighbour
    assert " ".join(ch[1].text.split()) in " ".join(texts[0].split())
    wide = make_view("heterag", neighbours=2).texts(chunked)[mid]
    assert " ".join(ch[mid + 2].text.split()) in " ".join(wide.split())


def test_heterag_view_options(chunked):
    bare = make_view("heterag", neighbours=0, include_title=False, include_heading=False).texts(chunked)
    assert bare == [" ".join(c.text.split()) for c in chunked.chunks]
    custom = make_view("heterag", neighbours=0, template="[{heading}] {chunk}").texts(chunked)
    assert custom[0].startswith("[Methods] ")
    with pytest.raises(InvalidInputError, match="chunk"):
        make_view("heterag", template="{title} only")
    with pytest.raises(InvalidInputError, match="template"):
        make_view("heterag", template="{chunk} {nonsense}")
    with pytest.raises(InvalidInputError, match="bad options"):
        make_view("naive", neighbours=3)


def test_late_view_vectors_depend_on_context(encoder):
    shared = "The committee approved the proposal after a long debate."
    doc_a = Document.create(f"Quantum computers use qubits and superposition. {shared} Error correction was discussed.", title="Physics")
    doc_b = Document.create(f"The bakery sells sourdough bread and croissants. {shared} Prices rose in spring.", title="Bakery")
    late, naive = make_view("late"), make_view("naive")
    cds = [chunk_document(d, encoder.tokenize, 12) for d in (doc_a, doc_b)]
    idx = [next(i for i, c in enumerate(cd.chunks) if "committee" in c.text) for cd in cds]
    offsets = [0, len(cds[0].chunks)]
    _, lv = late.embed(cds, encoder)
    _, nv = naive.embed(cds, encoder)
    la, lb = lv[offsets[0] + idx[0]], lv[offsets[1] + idx[1]]
    na, nb = nv[offsets[0] + idx[0]], nv[offsets[1] + idx[1]]
    if cds[0].chunks[idx[0]].text == cds[1].chunks[idx[1]].text:
        assert float(na @ nb) > 0.999  # same text, same naive vector
    assert float(la @ lb) < 0.99  # late vectors carry the document's context
    np.testing.assert_allclose(np.linalg.norm(lv, axis=1), 1.0, atol=1e-5)


def test_late_view_splits_long_documents_into_windows(encoder):
    doc = Document.create(" ".join(SENTENCES * 4), title="Long")
    cd = chunk_document(doc, encoder.tokenize, 64)
    view = make_view("late", window_tokens=128)
    windows = view._windows(cd, encoder, 128)
    assert len(windows) > 1
    assert all(len(ids) <= 128 for ids, _ in windows)
    assert sum(len(spans) for _, spans in windows) == len(cd.chunks)
    texts, vecs = view.embed([cd], encoder)
    assert vecs.shape == (len(cd.chunks), encoder.dim) and texts == [""] * len(cd.chunks)


def test_unknown_view_name_lists_choices():
    with pytest.raises(UnknownNameError, match="heterag, late, naive"):
        make_view("fancy")
