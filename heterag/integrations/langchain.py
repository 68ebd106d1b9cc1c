"""LangChain retriever over a heterag collection (langchain-core 1.x ``BaseRetriever``).

``HeteragRetriever(pipeline=open_collection("notes"), k=4).invoke("question")`` returns LangChain
``Document`` s: ``page_content`` is the short generation chunk; ``metadata`` holds ``source`` (the
document id), ``chunk_id``, ``score`` (fused cosine similarity, higher is better), ``scores`` (per signal:
``text``, ``image``, ``cross``), ``view`` (the retrieval view text that matched), ``title``, ``heading``,
``image`` (the stored image file for image items, else None) and the chunk's own metadata under
``metadata``. An image query goes in the ``image`` argument (path, bytes or PIL image):
``retriever.invoke("", image="scan.png")`` or with a question; ``k`` and ``where`` (a heterag filter)
can also be given per call. ``retrieval`` (``dense``, ``keyword``, ``hybrid``) and ``hybrid`` (a fusion spec such as
``rrf:k=60``) choose how the text is searched (default: the pipeline's), also per call; ``metadata["found_by"]``
says which searches found each chunk.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from heterag.integrations.common import check_search_options, search_hits
from heterag.integrations.common import node_metadata as hit_metadata


class HeteragRetriever(BaseRetriever):
    """LangChain retriever: short generation chunks found through heterag's retrieval views.

    Fields: ``pipeline`` (a :class:`heterag.Pipeline`, e.g. from :func:`heterag.open_collection`),
    ``k`` (results per query, default 4), ``where`` (a heterag metadata filter, default none), ``retrieval``
    (``dense``, ``keyword`` or ``hybrid``; default the pipeline's) and ``hybrid`` (fusion spec; default the pipeline's).
    A bad ``retrieval`` or ``hybrid`` is refused when the retriever is made.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    pipeline: Any
    k: int = 4
    where: dict[str, Any] | None = None
    retrieval: str | None = None
    hybrid: Any = None

    def __init__(self, **data: Any) -> None:
        check_search_options(data.get("retrieval"), data.get("hybrid"))  # heterag's one-line error, not pydantic's
        super().__init__(**data)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None, image: Any = None,
        where: dict[str, Any] | None = None, retrieval: str | None = None, hybrid: Any = None,
    ) -> list[Document]:
        retrieval, hybrid = check_search_options(retrieval or self.retrieval, hybrid if hybrid is not None else self.hybrid)
        hits = search_hits(self.pipeline, query or None, k=k if k is not None else self.k,
                           where=where if where is not None else self.where, image=image, retrieval=retrieval, hybrid=hybrid)
        return [Document(page_content=h.text, metadata=hit_metadata(h), id=h.chunk_id) for h in hits]


__all__ = ["HeteragRetriever", "hit_metadata"]
