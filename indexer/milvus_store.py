"""The Milvus store (`BOOKQA_STORE=milvus`): the index in Milvus collections, for libraries beyond one machine.

`BOOKQA_MILVUS_URI` is a local file (`.bookqa/milvus.db`: Milvus Lite runs embedded, nothing to
start) or a server (`http://host:19530`: Milvus standalone or a cluster). A build writes two new
collections, `<alias>__<stamp>` (one row per chunk: its record, document, dense vector and lexical
vector; the manifest in the collection's properties) and `<alias>__<stamp>_s` (one row per sentence
vector), and only when both are complete and loaded moves the alias `BOOKQA_MILVUS_COLLECTION` to
them: an interrupted build never serves, and its leftovers are dropped by the next build. A loaded
store reads the collections its manifest names, so a running server keeps answering from its
generation; the previous generation is kept until the next build.

Milvus Lite's analyzers cannot split Korean, so the lexical side carries Kiwi morphemes. Two ways,
measured on the gold set (README): `sparse` (default) stores client-side BM25 weights as sparse
vectors, scoring exactly like bm25s in the FAISS store; `bm25` sends the morphemes (hex-encoded, so
the `standard` tokenizer keeps each whole) to Milvus's built-in BM25 function.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexer.chunking import Chunk
from indexer.corpus import Document
from indexer.faiss_store import HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH, HNSW_M, chunk_record
from indexer.manifest import (
    IndexCorruptError,
    IndexLoadError,
    IndexMissingError,
    Manifest,
    StoreInfo,
    parse_manifest,
)
from indexer.settings import Settings
from indexer.store import DocumentData, IndexContent, verify_chunks

MANIFEST_PROPERTY = "bookqa.manifest"
SENTENCES_SUFFIX = "_s"
# The BM25 parameters of bm25s's default ("lucene") method, so both stores score alike.
BM25_K1, BM25_B = 1.5, 0.75
INSERT_BATCH = 1000
QUERY_BATCH = 1000
MAX_RECORD_BYTES = 65_535
CACHE_SIZE = 8192

_clients: dict[tuple[str, str], Any] = {}
_clients_lock = threading.Lock()


def is_server_uri(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "tcp://", "grpc://", "unix:"))


def milvus_client(uri: str, token: str = "") -> Any:
    """One client per URI and process (Milvus Lite allows one process per file); IndexLoadError if unreachable."""
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    if not is_server_uri(uri):
        path = Path(uri).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        uri = str(path)
    key = (uri, token)
    with _clients_lock:
        if key not in _clients:
            try:
                _clients[key] = MilvusClient(uri=uri, token=token, timeout=30)
            except (MilvusException, OSError, ValueError) as error:
                hint = (
                    " 다른 프로세스(예: 실행 중인 `bookqa serve`)가 이 Milvus Lite 파일을 쓰고 있을 수 있습니다."
                    if not is_server_uri(uri)
                    else ""
                )
                raise IndexLoadError(f"Milvus에 연결할 수 없습니다 ({uri}): {error}.{hint}") from error
        return _clients[key]


def term_dimension(term: str) -> int:
    """A morpheme's dimension in the sparse lexical vectors (a 32-bit hash of its text)."""
    return int.from_bytes(hashlib.blake2b(term.encode("utf-8"), digest_size=4).digest(), "little") % (2**32 - 1)


def encode_terms(terms: Sequence[str]) -> str:
    """Morphemes as text for Milvus's BM25 function: hex keeps each one a single `standard` token."""
    return " ".join(term.encode("utf-8").hex() for term in terms)


class LexicalWeights:
    """BM25 as sparse vectors: a chunk's weights carry idf × saturated tf, a query's its term counts.

    The inner product is then exactly bm25s's lucene BM25 score over the same chunks.
    """

    def __init__(self, chunk_terms: Iterator[Sequence[str]]) -> None:
        frequencies: Counter[str] = Counter()
        n, total = 0, 0
        for terms in chunk_terms:
            frequencies.update(set(terms))
            n += 1
            total += len(terms)
        self.n, self.avg_len = n, (total / n if n else 0.0)
        self.idf = {term: math.log(1 + (n - df + 0.5) / (df + 0.5)) for term, df in frequencies.items()}

    def chunk_vector(self, terms: Sequence[str]) -> dict[int, float]:
        norm = BM25_K1 * (1 - BM25_B + BM25_B * len(terms) / self.avg_len) if self.avg_len else BM25_K1
        vector: dict[int, float] = {}
        for term, tf in Counter(terms).items():
            dimension = term_dimension(term)
            vector[dimension] = vector.get(dimension, 0.0) + self.idf[term] * tf / (tf + norm)
        return vector


def query_vector(terms: Sequence[str]) -> dict[int, float]:
    vector: dict[int, float] = {}
    for term in terms:
        dimension = term_dimension(term)
        vector[dimension] = vector.get(dimension, 0.0) + 1.0
    return vector


def _doc_filter(docs: Collection[str] | None) -> str:
    return "" if docs is None else f"doc in {json.dumps(sorted(set(docs)), ensure_ascii=False)}"


class MilvusStore:
    """A live Milvus index: searches run in Milvus, chunk records and sentence vectors are fetched as needed."""

    def __init__(self, client: Any, manifest: Manifest, documents: Mapping[str, str], where: str) -> None:
        self.manifest = manifest
        self.where = where
        self._client = client
        self._documents = documents
        self._chunks = manifest.store.collection
        self._sentences = self._chunks + SENTENCES_SUFFIX
        self._lexical = str(manifest.store.params.get("lexical", "sparse"))
        self._dense_params = (
            {"ef": int(manifest.store.params.get("ef_search", HNSW_EF_SEARCH))}
            if manifest.store.dense_index == "hnsw"
            else {}
        )
        self._chunk_cache: OrderedDict[int, Chunk] = OrderedDict()
        self._sentence_cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def check_counts(self) -> None:
        """The collections hold as many rows as the manifest says (IndexCorruptError if not)."""
        chunks = int(self._client.get_collection_stats(self._chunks).get("row_count", -1))
        sentences = int(self._client.get_collection_stats(self._sentences).get("row_count", -1))
        if (chunks, sentences) != (self.manifest.n_chunks, self.manifest.n_sentences):
            raise IndexCorruptError(
                f"Milvus 컬렉션이 매니페스트와 다릅니다 ({self.where}): 청크 {chunks}/{self.manifest.n_chunks}, "
                f"문장 {sentences}/{self.manifest.n_sentences}. `bookqa index --force`로 다시 만드세요."
            )

    def verify(self) -> None:
        self.check_counts()
        verify_chunks(self, self._documents, self.where)

    def __len__(self) -> int:
        return self.manifest.n_chunks

    def _remember(self, cache: OrderedDict, key: int, value: Any) -> None:
        with self._lock:
            cache[key] = value
            cache.move_to_end(key)
            while len(cache) > CACHE_SIZE:
                cache.popitem(last=False)

    def _remember_records(self, hits: Sequence[Mapping[str, Any]]) -> None:
        for hit in hits:
            record = hit.get("entity", hit).get("record")
            if record is not None:
                self._remember(self._chunk_cache, int(hit.get("pk", hit.get("id"))), Chunk.from_record(json.loads(record)))

    def chunk(self, position: int) -> Chunk:
        with self._lock:
            cached = self._chunk_cache.get(position)
        if cached is not None:
            return cached
        rows = self._client.query(self._chunks, filter=f"pk == {int(position)}", output_fields=["pk", "record"])
        if not rows:
            raise IndexError(position)
        self._remember_records(rows)
        return self._chunk_cache[position]

    def position_of(self, chunk_id: str) -> int | None:
        doc, _, number = chunk_id.rpartition("#")
        entry = self.manifest.documents.get(doc)
        if entry is None or not number.isdigit() or int(number) >= entry.n_chunks:
            return None
        return entry.first_chunk + int(number)

    def _rows(self, collection: str, first: int, count: int, fields: list[str], key: str = "pk") -> list[dict]:
        rows: list[dict] = []
        for start in range(first, first + count, QUERY_BATCH):
            end = min(start + QUERY_BATCH, first + count)
            rows.extend(
                self._client.query(collection, filter=f"{key} >= {start} and {key} < {end}", output_fields=fields)
            )
        return sorted(rows, key=lambda row: row["pk"])

    def iter_chunks(self) -> Iterator[Chunk]:
        for start in range(0, self.manifest.n_chunks, QUERY_BATCH):
            for row in self._rows(self._chunks, start, min(QUERY_BATCH, self.manifest.n_chunks - start), ["pk", "record"]):
                yield Chunk.from_record(json.loads(row["record"]))

    def document_text(self, doc: str) -> str:
        return self._documents[doc]

    def document_ids(self) -> list[str]:
        return sorted(self.manifest.documents)

    def search_chunks(
        self, vector: np.ndarray, k: int, docs: Collection[str] | None = None
    ) -> list[tuple[int, float]]:
        k = min(k, self.manifest.n_chunks)
        if k <= 0:
            return []
        hits = self._client.search(
            self._chunks,
            data=[np.asarray(vector, dtype=np.float32).reshape(-1).tolist()],
            anns_field="dense",
            limit=k,
            filter=_doc_filter(docs),
            output_fields=["record"],
            search_params={"metric_type": "IP", "params": self._dense_params},
        )[0]
        self._remember_records(hits)
        return sorted(((int(h["pk"]), float(h["distance"])) for h in hits), key=lambda pair: (-pair[1], pair[0]))

    def sentence_cosines(self, vector: np.ndarray, positions: Sequence[int]) -> list[np.ndarray]:
        flat = np.asarray(vector, dtype=np.float32).reshape(-1)
        with self._lock:
            missing = sorted({int(p) for p in positions} - set(self._sentence_cache))
        for start in range(0, len(missing), QUERY_BATCH):
            batch = missing[start : start + QUERY_BATCH]
            rows = self._client.query(
                self._sentences, filter=f"chunk in {batch}", output_fields=["pk", "chunk", "vector"]
            )
            grouped: dict[int, list[tuple[int, list[float]]]] = {p: [] for p in batch}
            for row in rows:
                grouped[int(row["chunk"])].append((int(row["pk"]), row["vector"]))
            for position, items in grouped.items():
                items.sort()
                matrix = np.array([v for _, v in items], dtype=np.float32).reshape(len(items), flat.shape[0])
                self._remember(self._sentence_cache, position, matrix)
        with self._lock:
            matrices = [self._sentence_cache[int(p)] for p in positions]
        return [matrix @ flat for matrix in matrices]

    def search_lexical(
        self, terms: Sequence[str], k: int, docs: Collection[str] | None = None
    ) -> list[tuple[int, float]]:
        k = min(k, self.manifest.n_chunks)
        if not terms or k <= 0:
            return []
        if self._lexical == "bm25":
            data, field, metric = [encode_terms(terms)], "bm25", "BM25"
        else:
            data, field, metric = [query_vector(terms)], "lexical", "IP"
        hits = self._client.search(
            self._chunks,
            data=data,
            anns_field=field,
            # A few more than asked, so chunks tied at the cut are chosen by position, as in the FAISS store.
            limit=min(self.manifest.n_chunks, 2 * k + 10),
            filter=_doc_filter(docs),
            output_fields=["record"],
            search_params={"metric_type": metric},
        )[0]
        self._remember_records(hits)
        # Milvus Lite reports BM25 scores negated (as distances); a server reports them as they are.
        pairs = [(int(h["pk"]), abs(float(h["distance"]))) for h in hits]
        return sorted((pair for pair in pairs if pair[1] > 0), key=lambda pair: (-pair[1], pair[0]))[:k]

    def document_data(self, doc: str) -> DocumentData:
        entry = self.manifest.documents[doc]
        chunk_rows = self._rows(self._chunks, entry.first_chunk, entry.n_chunks, ["pk", "record", "dense"])
        sentence_rows = self._rows(self._sentences, entry.first_sentence, entry.n_sentences, ["pk", "vector"])
        dim = self.manifest.model.dim
        return DocumentData(
            doc,
            entry.sha256,
            [Chunk.from_record(json.loads(row["record"])) for row in chunk_rows],
            np.array([row["dense"] for row in chunk_rows], dtype=np.float32).reshape(-1, dim),
            np.array([row["vector"] for row in sentence_rows], dtype=np.float32).reshape(-1, dim),
        )

    def close(self) -> None:
        with self._lock:
            self._chunk_cache.clear()
            self._sentence_cache.clear()


class MilvusBackend:
    """Indexes as Milvus collections behind an alias; a build creates new ones and moves the alias."""

    kind = "milvus"

    def __init__(self, settings: Settings) -> None:
        self.uri = settings.milvus_uri
        self.token = settings.milvus_token
        self.alias = settings.milvus_collection
        self.exact_max_chunks = settings.exact_max_chunks
        self.lexical = settings.milvus_lexical

    @property
    def client(self) -> Any:
        return milvus_client(self.uri, self.token)

    def location(self) -> str:
        return f"{self.uri} (Milvus, {self.alias})"

    def dense_index_for(self, n_chunks: int) -> str:
        return "flat" if n_chunks <= self.exact_max_chunks else "hnsw"

    def _live_collection(self) -> str | None:
        from pymilvus.exceptions import MilvusException

        try:
            if self.alias not in self.client.list_aliases().get("aliases", []):
                return None
            return str(self.client.describe_alias(self.alias)["collection_name"])
        except MilvusException as error:
            raise IndexLoadError(f"Milvus에서 색인을 찾을 수 없습니다 ({self.location()}): {error}") from error

    def read_manifest(self) -> Manifest:
        live = self._live_collection()
        if live is None:
            raise IndexMissingError(f"색인이 없습니다: {self.location()}. 먼저 `bookqa index`를 실행하세요.")
        properties = self.client.describe_collection(live).get("properties", {})
        raw = properties.get(MANIFEST_PROPERTY)
        if not raw:
            raise IndexCorruptError(
                f"Milvus 컬렉션 {live}에 bookqa 매니페스트가 없습니다. `bookqa index --force`로 다시 만드세요."
            )
        manifest = parse_manifest(raw, f"{self.location()} → {live}")
        if manifest.store.kind != "milvus" or manifest.store.collection != live:
            raise IndexCorruptError(
                f"Milvus 컬렉션 {live}의 매니페스트가 다른 컬렉션을 가리킵니다. `bookqa index --force`로 다시 만드세요."
            )
        return manifest

    def open(self, manifest: Manifest, documents: list[Document], verify: bool = True) -> MilvusStore:
        from pymilvus.exceptions import MilvusException

        texts = {document.doc_id: document.text for document in documents}
        store = MilvusStore(self.client, manifest, texts, self.location())
        try:
            self.client.load_collection(store._chunks)
            self.client.load_collection(store._sentences)
            store.verify() if verify else store.check_counts()
        except MilvusException as error:
            raise IndexCorruptError(
                f"Milvus 색인을 읽을 수 없습니다 ({self.location()}): {error}. `bookqa index --force`로 다시 만드세요."
            ) from error
        return store

    def write(self, content: IndexContent) -> Manifest:
        client = self.client
        self._drop_leftovers()
        name = f"{self.alias}__{time.strftime('%Y%m%d%H%M%S')}_{secrets.token_hex(3)}"
        dim = content.manifest.model.dim
        if self.dense_index_for(content.manifest.n_chunks) == "flat":
            info = StoreInfo(kind="milvus", dense_index="flat", params={"lexical": self.lexical}, collection=name)
        else:
            params = {"M": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": HNSW_EF_SEARCH}
            info = StoreInfo(kind="milvus", dense_index="hnsw", params={**params, "lexical": self.lexical}, collection=name)
        self._create(name, dim, info)
        weights = LexicalWeights(c.terms for c in content.iter_chunks()) if self.lexical == "sparse" else None
        rows, sentence_rows, sentence_pk = [], [], 0
        for document in content.documents:
            entry = content.manifest.documents[document.doc_id]
            for offset, chunk in enumerate(document.chunks):
                record = json.dumps(chunk_record(chunk), ensure_ascii=False)
                if len(record.encode("utf-8")) > MAX_RECORD_BYTES:
                    raise IndexLoadError(f"청크가 Milvus 필드 한도(64 KB)를 넘습니다: {chunk.chunk_id}. chunk_tokens를 줄이세요.")
                row: dict[str, Any] = {
                    "pk": entry.first_chunk + offset,
                    "doc": chunk.doc,
                    "record": record,
                    "dense": document.chunk_vectors[offset].astype(np.float32).tolist(),
                }
                if weights is not None:
                    row["lexical"] = weights.chunk_vector(chunk.terms)
                else:
                    row["terms"] = encode_terms(chunk.terms)
                rows.append(row)
                if len(rows) >= INSERT_BATCH:
                    client.insert(name, rows)
                    rows = []
            # Rounded as the FAISS store keeps them (float16), so both stores quote the same sentences.
            vectors = np.asarray(document.sentence_vectors).astype(np.float16).astype(np.float32)
            owners = [entry.first_chunk + i for i, chunk in enumerate(document.chunks) for _ in chunk.sentences]
            for owner, vector in zip(owners, vectors):
                sentence_rows.append({"pk": sentence_pk, "chunk": owner, "vector": vector.tolist()})
                sentence_pk += 1
                if len(sentence_rows) >= INSERT_BATCH:
                    client.insert(name + SENTENCES_SUFFIX, sentence_rows)
                    sentence_rows = []
        if rows:
            client.insert(name, rows)
        if sentence_rows:
            client.insert(name + SENTENCES_SUFFIX, sentence_rows)
        for collection in (name, name + SENTENCES_SUFFIX):
            client.flush(collection)
            client.load_collection(collection)
        manifest = content.manifest.model_copy(update={"store": info})
        client.alter_collection_properties(name, properties={MANIFEST_PROPERTY: manifest.model_dump_json()})
        previous = self._live_collection()
        # The one step that makes the new index live: until here, readers see the previous one.
        if previous is None:
            client.create_alias(name, self.alias)
        else:
            client.alter_alias(name, self.alias)
        # The previous generation stays until the next build: a server that loaded it keeps answering.
        self._drop_except({name, previous})
        return manifest

    def _create(self, name: str, dim: int, info: StoreInfo) -> None:
        from pymilvus import DataType, Function, FunctionType

        client = self.client
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pk", DataType.INT64, is_primary=True)
        schema.add_field("doc", DataType.VARCHAR, max_length=1024)
        schema.add_field("record", DataType.VARCHAR, max_length=MAX_RECORD_BYTES)
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=dim)
        index = client.prepare_index_params()
        if info.dense_index == "flat":
            index.add_index("dense", index_type="FLAT", metric_type="IP")
        else:
            index.add_index(
                "dense",
                index_type="HNSW",
                metric_type="IP",
                params={"M": info.params["M"], "efConstruction": info.params["ef_construction"]},
            )
        if self.lexical == "bm25":
            schema.add_field(
                "terms", DataType.VARCHAR, max_length=MAX_RECORD_BYTES, enable_analyzer=True,
                analyzer_params={"tokenizer": "standard"},
            )
            schema.add_field("bm25", DataType.SPARSE_FLOAT_VECTOR)
            schema.add_function(
                Function(name="bm25", function_type=FunctionType.BM25, input_field_names=["terms"], output_field_names=["bm25"])
            )
            index.add_index("bm25", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        else:
            schema.add_field("lexical", DataType.SPARSE_FLOAT_VECTOR)
            index.add_index("lexical", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
        client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")
        sentences = client.create_schema(auto_id=False, enable_dynamic_field=False)
        sentences.add_field("pk", DataType.INT64, is_primary=True)
        sentences.add_field("chunk", DataType.INT64)
        sentences.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        sentence_index = client.prepare_index_params()
        sentence_index.add_index("vector", index_type="FLAT", metric_type="IP")
        sentence_index.add_index("chunk", index_type="INVERTED")
        client.create_collection(
            name + SENTENCES_SUFFIX, schema=sentences, index_params=sentence_index, consistency_level="Strong"
        )

    def _drop_leftovers(self) -> None:
        """Collections of builds that never went live (interrupted) and of older generations, so none pile up."""
        self._drop_except({self._live_collection()})

    def _drop_except(self, keep: set[str | None]) -> None:
        kept = {name for collection in keep if collection for name in (collection, collection + SENTENCES_SUFFIX)}
        for collection in self.client.list_collections():
            if collection.startswith(f"{self.alias}__") and collection not in kept:
                self.client.drop_collection(collection)
