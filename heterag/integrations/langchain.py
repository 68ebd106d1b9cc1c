"""LangChain retriever over a heterag collection (langchain-core 1.x ``BaseRetriever``).

``HeteragRetriever(pipeline=open_collection("notes"), k=4).invoke("question")`` returns LangChain
``Document`` s: ``page_content`` is the short generation chunk; ``metadata`` holds ``source`` (the
document id), ``chunk_id``, ``score`` (fused cosine similarity, higher is better), ``scores`` (per signal:
``text``, ``image``, ``cross``), ``view`` (the retrieval view text that matched), ``title``, ``heading``,
``image`` (the stored image file for image items, else None) and the chunk's own metadata under
``metadata``. An image query goes in the ``image`` argument (path, bytes or PIL image):
``retriever.invoke("", image="scan.png")`` or with a question; ``k`` and ``where`` (a heterag filter)
can also be given per call.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from heterag.integrations.common import node_metadata as hit_metadata


class HeteragRetriever(BaseRetriever):
    """LangChain retriever: short generation chunks found through heterag's retrieval views.

    Fields: ``pipeline`` (a :class:`heterag.Pipeline`, e.g. from :func:`heterag.open_collection`),
    ``k`` (results per query, default 4), ``where`` (a heterag metadata filter, default none).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    pipeline: Any
    k: int = 4
    where: dict[str, Any] | None = None

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None, image: Any = None,
        where: dict[str, Any] | None = None,
    ) -> list[Document]:
        hits = self.pipeline.retrieve(query or None, k=k if k is not None else self.k,
                                      where=where if where is not None else self.where, image=image)
        return [Document(page_content=h.text, metadata=hit_metadata(h), id=h.chunk_id) for h in hits]


__all__ = ["HeteragRetriever", "hit_metadata"]
