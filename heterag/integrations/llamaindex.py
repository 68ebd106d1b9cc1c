"""LlamaIndex retriever over a heterag collection (``llama_index.core`` ``BaseRetriever``).

``HeteragLlamaRetriever(open_collection("notes"), k=4)`` returns ``NodeWithScore`` s: a ``TextNode`` per
text chunk, an ``ImageNode`` (``image_path`` = the stored image file, ``text`` = its caption chunk) per image
item; ``score`` is heterag's fused cosine similarity and the node metadata holds ``source``, ``score``,
``scores``, ``view``, ``title`` and the chunk's metadata (as in :mod:`heterag.integrations.langchain`).
``QueryBundle.image_path`` is used as an image query, with or without ``query_str``. ``retrieval`` (``dense``,
``keyword``, ``hybrid``) and ``hybrid`` (a fusion spec such as ``rrf:k=60``) choose how the text is searched
(default: the pipeline's); ``metadata["found_by"]`` says which searches found each node. Works as the
retriever of ``RetrieverQueryEngine``.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import ImageNode, NodeWithScore, QueryBundle, TextNode

from heterag.integrations.common import check_search_options, node_metadata, search_hits


class HeteragLlamaRetriever(BaseRetriever):
    """LlamaIndex retriever: short generation chunks (and image items) found through heterag's views."""

    def __init__(self, pipeline: Any, k: int = 4, where: dict[str, Any] | None = None, *, retrieval: str | None = None,
                 hybrid: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipeline, self.k, self.where = pipeline, int(k), where
        self.retrieval, self.hybrid = check_search_options(retrieval, hybrid)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        text = query_bundle.query_str or None
        hits = search_hits(self.pipeline, text, k=self.k, where=self.where, image=query_bundle.image_path,
                           retrieval=self.retrieval, hybrid=self.hybrid)
        out = []
        for h in hits:
            meta = node_metadata(h)
            if h.image:
                node: TextNode = ImageNode(id_=h.chunk_id, text=h.text, image_path=h.image, metadata=meta)
            else:
                node = TextNode(id_=h.chunk_id, text=h.text, metadata=meta)
            out.append(NodeWithScore(node=node, score=float(h.score)))
        return out


__all__ = ["HeteragLlamaRetriever"]
