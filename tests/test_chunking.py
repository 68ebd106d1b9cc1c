"""Generation chunks: every token in exactly one chunk, size limits, sentence-friendly cuts, stable ids."""

from __future__ import annotations

import random

import pytest

from heterag import Document, InvalidInputError, Section, chunk_document

PROSE = (
    "Generators are functions that yield values lazily. A generator function contains a yield expression. "
    "Calling it returns an iterator, and nothing runs until the first next() call. "
    "Each next() resumes execution after the last yield. When the function returns, StopIteration is raised. "
) * 6


def _section_token_cover(encoder, doc, cd):
    for s_idx, section in enumerate(doc.sections):
        tokens = encoder.tokenize(section.text)
        spans = [(c.token_start, c.token_end) for c in cd.chunks if c.section_index == s_idx]
        assert spans[0][0] == 0 and spans[-1][1] == len(tokens)
        for (_a0, a1), (b0, _b1) in zip(spans, spans[1:], strict=False):
            assert a1 == b0, "chunks must be contiguous and non-overlapping"
        for c in cd.chunks:
            if c.section_index == s_idx:
                assert c.text == section.text[c.start : c.end]


@pytest.mark.parametrize("size", [8, 16, 64, 200])
def test_every_token_in_exactly_one_chunk_and_within_size(encoder, size):
    doc = Document.create(sections=[Section(PROSE, ("Intro",)), Section(PROSE[:300], ("Intro", "Details"))], title="Gen")
    cd = chunk_document(doc, encoder.tokenize, size)
    assert all(1 <= c.n_tokens <= size for c in cd.chunks)
    _section_token_cover(encoder, doc, cd)
    assert [c.index for c in cd.chunks] == list(range(len(cd.chunks)))
    assert cd.chunks[-1].heading == ("Intro", "Details")


def test_random_texts_are_covered(encoder):
    rng = random.Random(7)
    words = ["alpha", "beta.", "Gamma", "δέλτα", "x=1;", "(paren)", "naïve", "end!", "\n\n", "123.45", "hyphen-ated"]
    for _ in range(20):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 400)))
        if not text.strip():
            continue
        doc = Document.create(text)
        cd = chunk_document(doc, encoder.tokenize, rng.choice([8, 24, 64]))
        _section_token_cover(encoder, doc, cd)


def test_cuts_prefer_sentence_boundaries_and_avoid_tiny_tails(encoder):
    doc = Document.create(PROSE)
    chunks = chunk_document(doc, encoder.tokenize, 64).chunks
    ends_sentence = sum(c.text.rstrip()[-1] in ".!?" for c in chunks)
    assert ends_sentence >= len(chunks) - 1
    assert min(c.n_tokens for c in chunks) >= 16


def test_text_without_word_boundaries_is_still_cut(encoder):
    doc = Document.create("x" * 5000)
    cd = chunk_document(doc, encoder.tokenize, 32)
    assert all(c.n_tokens <= 32 for c in cd.chunks)
    _section_token_cover(encoder, doc, cd)


def test_chunk_ids_are_content_hashes(encoder):
    a = chunk_document(Document.create(PROSE, title="T"), encoder.tokenize, 64).chunks
    b = chunk_document(Document.create(PROSE, title="T"), encoder.tokenize, 64).chunks
    c = chunk_document(Document.create(PROSE, title="Other"), encoder.tokenize, 64).chunks
    assert [x.id for x in a] == [x.id for x in b]
    assert not {x.id for x in a} & {x.id for x in c}
    assert len({x.id for x in a}) == len(a)


def test_bad_chunk_size(encoder):
    with pytest.raises(InvalidInputError, match="at least 8"):
        chunk_document(Document.create("some text"), encoder.tokenize, 4)


@pytest.mark.parametrize("text", ["", "   \n\t  "])
def test_empty_documents_are_rejected(text):
    with pytest.raises(InvalidInputError, match="empty"):
        Document.create(text, source="notes.txt")


def test_oversized_document_is_rejected_with_size_in_message():
    with pytest.raises(InvalidInputError, match=r"MiB.*limit"):
        Document.create("word " * 1000, max_bytes=1000)


def test_reserved_metadata_keys_are_rejected():
    with pytest.raises(InvalidInputError, match="reserved"):
        Document.create("text", metadata={"doc_id": "x"})


@pytest.mark.parametrize("label", ["Figure 1:", "Fig. 2.", "Table 3:", "Figure 4a."])
def test_a_caption_keeps_its_label(encoder, label):
    """Found by a break-test: a PDF chunk ended with a dangling "Figure 1:" and the next began with the caption
    text without its label. Whatever text comes before, no cut falls between a label and its caption."""
    caption = f"{label} Tidal range at the harbour mouth over one lunar month, with spring and neap tides marked."
    for words in range(20, 70, 3):
        text = " ".join(["Tides"] + ["rise and fall twice a day."] * (words // 6)) + "\n" + caption
        cd = chunk_document(Document.create(text, id="d"), encoder.tokenize, 32)
        texts = [c.text.strip() for c in cd.chunks]
        assert not any(t.endswith(label) for t in texts), texts
        assert not any(t.startswith("Tidal range") for t in texts), texts
