"""Vector stores for the embedding prefilter: one interface, a local default and Milvus.

* :class:`LocalStore`: faiss when installed (``flat`` exact inner product by default, ``hnsw`` or
  ``ivf`` approximate for categories of at least ``APPROX_MIN`` items; smaller ones are searched
  exactly), else exact numpy. No server. An approximate index searches wider until it returns K.
* :class:`MilvusStore`: pymilvus ``MilvusClient``; a ``*.db`` path runs Milvus Lite embedded, an
  ``http://host:19530`` URI talks to a Milvus server or cluster. The category is a filter field.

Vectors are L2-normalized, so inner product = cosine.
"""
from __future__ import annotations

import importlib.util
import logging

import numpy as np

from fos.config import INDEXES

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its INFO lines about missing AVX512 builds


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


APPROX_MIN = 4096  # categories with fewer vectors get an exact index whatever --index says


class LocalStore(VectorStore):
    def __init__(self, index: str = "flat", use_faiss: bool | None = None):
        if index not in INDEXES:
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
        if self.kind == "flat" or len(vecs) < APPROX_MIN:  # small partitions: exact search is cheap and exact
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

    @staticmethod
    def _search_k(index, q: np.ndarray, k: int):
        """Search until ``k`` hits come back: an approximate index can return fewer (IVF probes too few
        lists, HNSW explores too few nodes), so probes / efSearch grow until it gives ``k``."""
        if hasattr(index, "hnsw"):
            index.hnsw.efSearch = max(index.hnsw.efSearch, 2 * k)
        while True:
            scores, pos = index.search(q, k)
            keep = pos[0] >= 0
            if keep.sum() >= k or not hasattr(index, "nprobe") or index.nprobe >= index.nlist:
                return scores[0][keep], pos[0][keep]
            index.nprobe = min(index.nlist, 2 * index.nprobe)

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
        scores, pos = self._search_k(index, q, k)
        return ix[pos], scores


class MilvusStore(VectorStore):
    """Milvus through pymilvus. ``uri``: a local ``*.db`` file (Milvus Lite) or a server URI."""

    def __init__(self, uri: str, collection: str = "fos_library", token: str = "", recreate: bool = True,
                 index_type: str = "FLAT"):
        pymilvus = require("pymilvus", "pymilvus milvus-lite")
        self.index_type = index_type
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
        # an explicit FLAT (exact) index: the quick-setup AUTOINDEX is approximate and returned fewer
        # than K hits (10 for K = 20 or 50 on the msrc-fos library)
        from pymilvus import DataType

        schema = c.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(vectors.shape[1]))
        schema.add_field("category", DataType.VARCHAR, max_length=512)
        index = c.prepare_index_params()
        index.add_index(field_name="vector", index_type=self.index_type, metric_type="IP")
        c.create_collection(self.collection, schema=schema, index_params=index, consistency_level="Strong")
        rows = [{"id": int(i), "vector": v.tolist(), "category": str(cat)}
                for i, (v, cat) in enumerate(zip(vectors, categories))]
        for s in range(0, len(rows), 5000):
            c.insert(self.collection, rows[s:s + 5000])
        c.flush(self.collection) if hasattr(c, "flush") else None

    def search(self, query, k, category):
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
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
