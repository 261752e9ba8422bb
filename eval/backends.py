"""`bookqa bench backends`: the embedder's inference backends compared on this machine, in one run.

Each candidate runs in a process of its own (so its memory is its own): float32 torch through
plain sentence-transformers (the reference), sentence-transformers' OpenVINO backend at fp32 and
int8 (queries through the lean runtime that serves them), and ONNX Runtime at fp32 and with
dynamic int8 quantisation (exported from the same torch model; sentence-transformers' own onnx
extra cannot be installed beside transformers 5). Reported: query latency (p50, single
questions), indexing throughput (the book's chunks and sentences), memory, agreement with the
reference vectors, and dense retrieval quality on the gold set computed from each one's vectors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from eval.gold import GoldQuestion
from eval.metrics import is_relevant, percentile, reciprocal_rank
from indexer.chunking import Chunk, embedding_text
from indexer.settings import Settings

CANDIDATES = (
    ("torch", "fp32"),
    ("openvino", "fp32"),
    ("openvino", "int8"),
    ("onnxruntime", "fp32"),
    ("onnxruntime", "int8"),
)
QUERY_SAMPLE = 150


@dataclass
class BackendFigures:
    """One candidate's figures; ratios are against the torch float32 reference of the same run."""

    backend: str
    precision: str
    load_s: float
    query_p50_ms: float
    query_ratio: float
    docs_per_s: float
    docs_ratio: float
    rss_mb: float
    cosine_min: float
    cosine_mean: float
    dense_recall_at_1: float
    dense_mrr_at_10: float


def _worker(backend: str, precision: str, settings: Settings, texts_path: Path, out_path: Path) -> None:
    """Runs in a child process: load one candidate, time it, save its vectors and figures."""
    import psutil

    data = json.loads(texts_path.read_text(encoding="utf-8"))
    process = psutil.Process()
    started = time.perf_counter()
    encode_query, encode_docs = _load_candidate(backend, precision, settings)
    load_s = time.perf_counter() - started
    for text in data["queries"][:5]:
        encode_query([text])
    query_ms, query_vectors = [], []
    for text in data["queries"]:
        begun = time.perf_counter()
        query_vectors.append(encode_query([text])[0])
        query_ms.append((time.perf_counter() - begun) * 1000)
    begun = time.perf_counter()
    doc_vectors = encode_docs(data["documents"])
    docs_s = time.perf_counter() - begun
    np.savez(
        out_path,
        queries=np.asarray(query_vectors, dtype=np.float32),
        documents=np.asarray(doc_vectors, dtype=np.float32),
        figures=np.asarray(
            [load_s, percentile(query_ms, 50) or 0.0, len(data["documents"]) / docs_s, process.memory_info().rss / 2**20]
        ),
    )


def _load_candidate(backend: str, precision: str, settings: Settings):  # noqa: ANN202 (two encode functions)
    from indexer.embedding import Embedder, OpenVINOQueryEncoder

    if backend == "torch":
        model = Embedder(settings.model, settings.cache_dir, backend="torch", precision="fp32")
        return model.encode_queries, model.encode_documents
    if backend == "openvino":
        builder = Embedder(settings.model, settings.cache_dir, backend="openvino", precision=precision)
        lean = OpenVINOQueryEncoder(settings.model, settings.cache_dir, precision)
        return lean.encode_queries, builder.encode_documents
    return _onnx_candidate(precision, settings)


def _onnx_candidate(precision: str, settings: Settings):  # noqa: ANN202
    """The torch model exported to ONNX (and dynamically quantised to int8), run by ONNX Runtime."""
    import onnxruntime
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from sentence_transformers import SentenceTransformer

    from indexer.openvino_encoder import model_location

    location = model_location(settings.model, settings.cache_dir)
    model = SentenceTransformer(location, device="cpu")
    folder = settings.cache_dir / "exports" / "onnx"
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = folder / "model.onnx"
    if not fp32.exists():
        transformer = model[0].auto_model.eval()

        class HiddenStates(torch.nn.Module):
            """Keyword arguments only: transformers 5's forward takes more positional ones than these two."""

            def __init__(self) -> None:
                super().__init__()
                self.inner = transformer

            def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
                return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        example = model.tokenizer(["query: 마이데이터란?"], return_tensors="pt")
        with torch.no_grad():
            _export_onnx(torch, HiddenStates(), example, fp32)
    path = fp32
    if precision == "int8":
        path = folder / "model-int8.onnx"
        if not path.exists():
            quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tokenizer = model.tokenizer
    prompts = model.prompts or {}
    del model

    def encode(texts: list[str], prompt: str) -> np.ndarray:
        out = []
        for start in range(0, len(texts), 32):
            batch = tokenizer([prompt + t for t in texts[start : start + 32]], padding=True, truncation=True, return_tensors="np")
            hidden = session.run(None, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})[0]
            mask = batch["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            out.append(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
        return np.concatenate(out).astype(np.float32)

    return (lambda texts: encode(texts, prompts.get("query", ""))), (lambda texts: encode(texts, prompts.get("passage", "")))


def _export_onnx(torch, module, example, target: Path) -> None:  # noqa: ANN001
    torch.onnx.export(
        module,
        (example["input_ids"], example["attention_mask"]),
        str(target),
        input_names=["input_ids", "attention_mask"],
        output_names=["last_hidden_state"],
        dynamic_axes={name: {0: "batch", 1: "tokens"} for name in ("input_ids", "attention_mask", "last_hidden_state")},
        opset_version=17,
        dynamo=True,
    )


def compare_backends(settings: Settings, gold: Sequence[GoldQuestion], chunks: Sequence[Chunk]) -> list[BackendFigures]:
    """Every candidate in its own process, the reference first and again last (to show drift)."""
    queries = [question.question for question in gold][:QUERY_SAMPLE]
    documents = [embedding_text(chunk) for chunk in chunks] + [
        chunk.sentence_text(sentence) for chunk in chunks for sentence in chunk.sentences
    ]
    order = [*CANDIDATES, CANDIDATES[0]]
    raw: list[tuple[str, str, dict[str, np.ndarray]]] = []
    with tempfile.TemporaryDirectory() as scratch:
        texts_path = Path(scratch) / "texts.json"
        texts_path.write_text(json.dumps({"queries": queries, "documents": documents}, ensure_ascii=False), encoding="utf-8")
        for number, (backend, precision) in enumerate(order):
            out_path = Path(scratch) / f"{number}.npz"
            code = (
                "import sys; from pathlib import Path; from eval.backends import _worker; from indexer.settings import Settings; "
                f"_worker({backend!r}, {precision!r}, Settings(), Path({str(texts_path)!r}), Path({str(out_path)!r}))"
            )
            subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})
            with np.load(out_path) as loaded:
                raw.append((backend, precision, {key: loaded[key] for key in loaded.files}))
    reference = raw[0][2]
    reference_ms = float(np.mean([raw[0][2]["figures"][1], raw[-1][2]["figures"][1]]))
    reference_docs = float(np.mean([raw[0][2]["figures"][2], raw[-1][2]["figures"][2]]))
    results = []
    for backend, precision, data in raw[:-1]:
        load_s, query_ms, docs_per_s, rss = (float(x) for x in data["figures"])
        cosines = np.concatenate(
            [(data["queries"] * reference["queries"]).sum(1), (data["documents"] * reference["documents"]).sum(1)]
        )
        recall, mrr = dense_quality(gold[:QUERY_SAMPLE], chunks, data["queries"], data["documents"])
        results.append(
            BackendFigures(
                backend,
                precision,
                round(load_s, 2),
                round(query_ms, 2),
                round(query_ms / reference_ms, 3),
                round(docs_per_s, 1),
                round(docs_per_s / reference_docs, 3),
                round(rss, 1),
                round(float(cosines.min()), 6),
                round(float(cosines.mean()), 6),
                round(recall, 3),
                round(mrr, 3),
            )
        )
    return results


def dense_quality(
    gold: Sequence[GoldQuestion], chunks: Sequence[Chunk], queries: np.ndarray, documents: np.ndarray
) -> tuple[float, float]:
    """Dense Recall@1 and MRR@10 over the answerable questions, scored as the retriever does (chunk and best sentence)."""
    n = len(chunks)
    chunk_vectors, sentence_vectors = documents[:n], documents[n:]
    owner = np.repeat(np.arange(n), [len(chunk.sentences) for chunk in chunks])
    hits, ranks = [], []
    for question, vector in zip(gold, queries):
        if not question.answerable:
            continue
        best = np.full(n, -np.inf, dtype=np.float32)
        np.maximum.at(best, owner, sentence_vectors @ vector)
        chunk_scores = chunk_vectors @ vector
        combined = 0.5 * chunk_scores + 0.5 * np.where(np.isfinite(best), best, chunk_scores)
        order = np.argsort(-combined, kind="stable")[:10]
        relevance = [is_relevant(chunks[i].text, question.evidence) for i in order]
        hits.append(float(relevance[0]) if relevance else 0.0)
        ranks.append(reciprocal_rank(relevance, 10))
    return float(np.mean(hits)), float(np.mean(ranks))


def backends_markdown(results: Sequence[BackendFigures]) -> str:
    """The comparison as a Markdown table."""
    lines = [
        "| backend | precision | query p50 ms (÷ torch fp32) | docs/s (× torch fp32) | RSS MB | cosine to fp32 min / mean | dense R@1 | dense MRR@10 | load s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.backend} | {r.precision} | {r.query_p50_ms:.1f} ({r.query_ratio:.2f}×) | {r.docs_per_s:.0f} ({r.docs_ratio:.2f}×) | "
            f"{r.rss_mb:.0f} | {r.cosine_min:.5f} / {r.cosine_mean:.5f} | {r.dense_recall_at_1:.3f} | {r.dense_mrr_at_10:.3f} | {r.load_s:.1f} |"
        )
    return "\n".join(lines) + "\n"


def write_backends(out_dir: Path, results: Sequence[BackendFigures]) -> Path:
    """backends.json and backends.md in `out_dir`; returns the Markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "backends.json").write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n", encoding="utf-8")
    path = out_dir / "backends.md"
    path.write_text("# Embedding backends on this machine\n\n" + backends_markdown(results), encoding="utf-8")
    return path
