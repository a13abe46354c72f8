"""Vector stores for the embedding prefilter: one interface, a local default and Milvus.

* :class:`LocalStore`: faiss when installed (``flat`` exact inner product by default, ``hnsw`` or
  ``ivf`` approximate for large libraries), else exact numpy. No server.
* :class:`MilvusStore`: pymilvus ``MilvusClient``; a ``*.db`` path runs Milvus Lite embedded, an
  ``http://host:19530`` URI talks to a Milvus server or cluster. The category is a filter field.

Vectors are L2-normalized, so inner product = cosine.
"""
from __future__ import annotations

import importlib.util

import numpy as np


def require(module: str, pip_name: str):
    if importlib.util.find_spec(module) is None:
        raise RuntimeError(f"{module} is not installed: `pip install {pip_name}`")
    return importlib.import_module(module)


class VectorStore:
    """``add(vectors, categories)`` then ``search(query, k, category) -> (indices, scores)``, best first.

    Indices are positions in the order vectors were added (the library's item order).
    """

    def add(self, vectors: np.ndarray, categories: np.ndarray) -> None:
        raise NotImplementedError

    def search(self, query: np.ndarray, k: int, category: str) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class LocalStore(VectorStore):
    def __init__(self, index: str = "flat", use_faiss: bool | None = None):
        if index not in ("flat", "hnsw", "ivf"):
            raise ValueError(f"unknown index {index!r}; use flat (exact), hnsw or ivf")
        self.kind = index
        has = importlib.util.find_spec("faiss") is not None
        self.use_faiss = has if use_faiss is None else use_faiss
        if index != "flat" and not self.use_faiss:
            raise RuntimeError(f"the {index} index needs faiss: `pip install faiss-cpu`")
        self.parts: dict[str, tuple[np.ndarray, object]] = {}

    def _build(self, vecs: np.ndarray):
        if not self.use_faiss:
            return vecs
        import faiss

        d = vecs.shape[1]
        if self.kind == "flat":
            idx = faiss.IndexFlatIP(d)
        elif self.kind == "hnsw":
            idx = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
            idx.hnsw.efSearch = 128
        else:
            nlist = max(1, min(1024, int(np.sqrt(len(vecs)))))
            idx = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            idx.train(vecs)
            idx.nprobe = max(1, nlist // 8)
        idx.add(vecs)
        return idx

    def add(self, vectors, categories):
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        categories = np.asarray(categories)
        offset = sum(len(ix) for ix, _ in self.parts.values())
        if offset:
            raise RuntimeError("LocalStore is built once from the whole library; create a new store to re-index")
        for cat in np.unique(categories):
            ix = np.nonzero(categories == cat)[0]
            self.parts[str(cat)] = (ix, self._build(vectors[ix]))

    def search(self, query, k, category):
        if category not in self.parts:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        ix, index = self.parts[category]
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        k = min(k, len(ix))
        if isinstance(index, np.ndarray):
            sims = index @ q[0]
            top = np.argsort(-sims, kind="stable")[:k]
            return ix[top], sims[top]
        scores, pos = index.search(q, k)
        keep = pos[0] >= 0
        return ix[pos[0][keep]], scores[0][keep]


class MilvusStore(VectorStore):
    """Milvus through pymilvus. ``uri``: a local ``*.db`` file (Milvus Lite) or a server URI."""

    def __init__(self, uri: str, collection: str = "fos_library", token: str = "", recreate: bool = True):
        pymilvus = require("pymilvus", "pymilvus milvus-lite")
        self.client = pymilvus.MilvusClient(uri, token=token) if token else pymilvus.MilvusClient(uri)
        self.collection = collection
        self.recreate = recreate

    def add(self, vectors, categories):
        vectors = np.asarray(vectors, dtype=np.float32)
        c = self.client
        if c.has_collection(self.collection):
            if not self.recreate:
                return
            c.drop_collection(self.collection)
        c.create_collection(self.collection, dimension=vectors.shape[1], metric_type="IP", auto_id=False,
                            consistency_level="Strong")
        rows = [{"id": int(i), "vector": v.tolist(), "category": str(cat)}
                for i, (v, cat) in enumerate(zip(vectors, categories))]
        for s in range(0, len(rows), 5000):
            c.insert(self.collection, rows[s:s + 5000])
        c.flush(self.collection) if hasattr(c, "flush") else None

    def search(self, query, k, category):
        q = np.asarray(query, dtype=np.float32).reshape(-1).tolist()
        cat = str(category).replace("\\", "\\\\").replace('"', '\\"')
        res = self.client.search(self.collection, data=[q], limit=int(k), filter=f'category == "{cat}"',
                                 search_params={"metric_type": "IP"})
        hits = res[0]
        return (np.array([h["id"] for h in hits], dtype=np.int64),
                np.array([h["distance"] for h in hits], dtype=np.float32))


def make_store(kind: str = "local", index: str = "flat", uri: str | None = None) -> VectorStore:
    if kind == "local":
        return LocalStore(index)
    if kind == "milvus":
        return MilvusStore(uri or "fos_milvus.db")
    raise ValueError(f"unknown vector store {kind!r}; use local or milvus")
