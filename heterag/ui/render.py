"""HTML for the web app, built only from escaped text and our own markup.

Everything that comes from a collection or a user (chunk text, titles, views, ids, answer
sentences quoted from sources) goes through :func:`html.escape`, so a source containing
``<script>`` or ``<img onerror=...>`` shows as those characters and never becomes markup.
Images are embedded as ``data:`` thumbnails made here, never as links to files.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

from heterag.core.images import ImageRef
from heterag.core.results import Answer, Hit
from heterag.generators.prompting import cited_numbers
from heterag.ui.catalog import DocumentInfo, thumbnail_data_uri

SNIPPET_CHARS = 600


def text(s: str) -> str:
    """``s`` as HTML text: every markup character escaped (newlines kept by the chat's line breaks)."""
    return html.escape(str(s), quote=True)


def _thumb(path: str | None) -> str:
    uri = thumbnail_data_uri(path) if path else None
    return f'<img class="hr-thumb" alt="source image" src="{uri}">' if uri else ""


def image_ref_html(ref: ImageRef, size: int = 160) -> str:
    """The user's query image as an inline thumbnail."""
    from PIL import Image

    with Image.open(io.BytesIO(ref.data)) as img:
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=80)
    uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img class="hr-query-image" alt="query image" src="{uri}">'


def _scores(hit: Hit) -> str:
    parts = [f"{name} {value:.3f}" for name, value in sorted(hit.scores.items())]
    return f"score {hit.score:.3f}" + (f" ({', '.join(parts)})" if len(parts) > 1 else "")


#: How a hit was found (``Hit.found_by``), as the sources say it.
FOUND_BY = {("dense",): "vectors", ("keyword",): "keywords", ("dense", "keyword"): "keywords + vectors"}


def found_by(hit: Hit) -> str:
    """``vectors``, ``keywords`` or ``keywords + vectors``: which searches found ``hit``."""
    return FOUND_BY.get(tuple(sorted(hit.found_by)), " + ".join(hit.found_by))


def _snippet(s: str) -> str:
    s = s.strip()
    return s if len(s) <= SNIPPET_CHARS else s[: SNIPPET_CHARS - 1] + "\u2026"


def sources_html(answer: Answer, marks: Mapping[str, str] | None = None) -> str:
    """Every retrieved hit of ``answer``, numbered as the answer cites them: thumbnail, where it comes from
    (file, page, section, figure and title, as :meth:`heterag.core.results.SourceRef.label` writes it for
    ``heterag ask``), score, the generation chunk, and the retrieval view that matched. A hit whose document
    id is in ``marks`` (document id -> plain-text label, from a chat overlay) is flagged in red with the label."""
    marks = marks or {}
    if not answer.hits:
        return '<div class="hr-sources"><p class="hr-none">No sources were retrieved.</p></div>'
    cited = set(cited_numbers(answer.text)) | {c.number for c in answer.citations}
    rows = []
    for n, hit in enumerate(answer.hits, start=1):
        label = hit.where.label(hit.doc_id)  # the same citation as ``heterag ask``: file, page, section, figure
        view = hit.view.strip() or "(late chunking: the chunk's tokens in the context of its document)"
        mark = '<span class="hr-cited">cited</span>' if n in cited else ""
        flag = marks.get(hit.doc_id)
        if flag:
            mark += f' <span class="hr-flag">{text(flag)}</span>'
        chunk = _snippet(hit.text) if hit.text.strip() else "(image item without text)"
        rows.append(
            f'<div class="hr-source{" hr-is-cited" if n in cited else ""}{" hr-injected" if flag else ""}" data-n="{n}">'
            f"{_thumb(hit.image)}"
            f'<div class="hr-body"><div class="hr-head"><span class="hr-num">[{n}]</span> '
            f'<span class="hr-title">{text(label)}</span>'
            f' <span class="hr-score">{text(_scores(hit))}</span>'
            f' <span class="hr-found" title="found by">{text(found_by(hit))}</span> {mark}</div>'
            f'<div class="hr-chunk">{text(chunk)}</div>'
            f'<details class="hr-view"><summary>view that matched</summary><div>{text(_snippet(view))}</div></details>'
            f'<div class="hr-doc">document {text(hit.doc_id)}</div></div></div>'
        )
    return f'<div class="hr-sources"><div class="hr-label">Sources</div>{"".join(rows)}</div>'


def sources_json(answer: Answer, marks: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The sources of ``answer`` as plain data (what the API returns); a flagged source (see
    :func:`sources_html`) has its label under ``flag``."""
    cited = set(cited_numbers(answer.text)) | {c.number for c in answer.citations}
    marks = marks or {}
    return [
        {"n": n, "doc_id": h.doc_id, "chunk_id": h.chunk_id, "title": h.title, **h.where.fields(h.doc_id), "score": round(h.score, 6),
         "scores": {k: round(v, 6) for k, v in h.scores.items()}, "view": h.view, "text": h.text,
         "has_image": h.image is not None, "cited": n in cited, "found_by": list(h.found_by), **({"flag": marks[h.doc_id]} if h.doc_id in marks else {})}
        for n, h in enumerate(answer.hits, start=1)
    ]


def banner_html(lines: Sequence[str]) -> str:
    """Chat-overlay banner lines (plain text) as one escaped HTML block; "" when there are none."""
    if not lines:
        return ""
    return '<div class="hr-banner" role="status">' + "".join(f"<p>{text(line)}</p>" for line in lines) + "</div>"


def documents_html(docs: Sequence[DocumentInfo], total: int | None = None, collection: str = "") -> str:
    """A table of documents: thumbnail, id, title, chunk count."""
    total = len(docs) if total is None else total
    head = f"{total} document{'' if total == 1 else 's'}" + (f" in {text(collection)}" if collection else "")
    if len(docs) < total:
        head += f" (first {len(docs)} shown)"
    rows = "".join(
        f'<tr data-doc-id="{text(d.id)}"><td>{_thumb(str(d.image) if d.image else None)}</td>'
        f'<td class="hr-doc-id">{text(d.id)}</td><td>{text(d.title)}</td><td>{d.chunks}</td></tr>'
        for d in docs
    )
    return (f'<div class="hr-docs"><p>{head}</p><table><thead><tr><th></th><th>id</th><th>title</th>'
            f"<th>chunks</th></tr></thead><tbody>{rows}</tbody></table></div>")


CSS = """
.hr-sources { font-size: 0.9em; }
.hr-label { font-weight: 600; margin-bottom: 4px; }
.hr-source { display: flex; gap: 8px; padding: 6px 0; border-top: 1px solid var(--border-color-primary); }
.hr-thumb { width: 72px; height: 72px; object-fit: cover; border-radius: 4px; flex: none; }
.hr-query-image { max-width: 160px; max-height: 160px; border-radius: 4px; }
.hr-chunk, .hr-view div { white-space: pre-wrap; }
.hr-num { font-weight: 600; }
.hr-score, .hr-doc { opacity: 0.7; }
.hr-found { font-size: 0.8em; border: 1px solid currentColor; border-radius: 4px; padding: 0 4px; opacity: 0.75; }
.hr-cited { background: var(--color-accent-soft); border-radius: 4px; padding: 0 4px; }
.hr-docs table { width: 100%; }
.hr-docs td { vertical-align: top; padding: 2px 6px; }
.hr-injected { border-left: 4px solid #d32f2f; padding-left: 6px; background: rgba(211, 47, 47, 0.08); }
.hr-flag { color: #fff; background: #d32f2f; border-radius: 4px; padding: 0 4px; font-weight: 600; }
.hr-banner { border: 2px solid #d32f2f; border-radius: 6px; padding: 4px 10px; background: rgba(211, 47, 47, 0.08); }
.hr-banner p { margin: 2px 0; }
"""

__all__ = ["CSS", "banner_html", "documents_html", "image_ref_html", "sources_html", "sources_json", "text"]
