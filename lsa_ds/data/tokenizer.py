"""Tokenizers: a SentencePiece model trained locally (or loaded), or an HF tokenizer (a local folder,
or a hub name in the local Hugging Face cache).

Both are wrapped in `Tokenizer`, which encodes batches of documents on several threads and frames
each document as `BOS tokens EOS` without ever doubling a BOS the tokenizer added itself.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

import lsa_ds.data.hub as hub
from lsa_ds.data.sources import iter_records, sample_text, source_fingerprint
from lsa_ds.errors import UserError
from lsa_ds.recipe.schema import DataConfig

SPM_FILE = "tokenizer.model"

# Trainer options that make SentencePiece lossless on arbitrary text (code included):
# no normalisation and no whitespace rewriting, so decode(encode(text)) == text; unknown
# characters fall back to bytes; newlines get their own piece instead of six byte pieces.
_SPM_LOSSLESS = dict(
    byte_fallback=True,
    normalization_rule_name="identity",
    add_dummy_prefix=False,
    remove_extra_whitespaces=False,
    allow_whitespace_only_pieces=True,
    split_digits=True,
    user_defined_symbols=["\n"],
    max_sentence_length=1 << 20,
    unk_id=0,
    bos_id=1,
    eos_id=2,
    pad_id=3,
    minloglevel=2,
    hard_vocab_limit=False,  # a small corpus gets a smaller vocabulary instead of an error
)


PROBE_TEXT = ("def f(x):\n\treturn x  # 12,345.6 ÄÖü ß → ∑ 日本語 😀\n\n"
              "  Hello,   World! The quick brown fox jumps over the lazy dog.\r\n")
"""Text whose token ids are part of a tokenizer's fingerprint: spaces, tabs, newlines, digits,
accents, CJK and emoji, so normalisation and merges show up in it. (No special-token strings: an
HF tokenizer matches "<s>" in text as the special token, SentencePiece reads it as text, and the
corpora here never hold them.)"""


class Tokenizer:
    """Uniform face over SentencePiece and HF tokenizers.

    Two identities: `file_digest` hashes the files it was loaded from (a token cache is keyed by
    it: new files, new cache), and `fingerprint` hashes only what decides token ids (vocabulary in
    id order, special ids, BOS/EOS framing and the ids of PROBE_TEXT), so the same tokenizer saved
    as SentencePiece, as an HF folder or in an lsa-ds export has one fingerprint."""

    def __init__(self, kind: str, impl, path: Path, file_digest: str, add_bos: bool, add_eos: bool, threads: int = 2):
        self.kind, self.impl, self.path, self.file_digest = kind, impl, path, file_digest
        self._fingerprint: str | None = None
        self.add_bos, self.add_eos, self.threads = add_bos, add_eos, threads
        if kind == "sentencepiece":
            self.vocab_size = impl.get_piece_size()
            self.bos_id, self.eos_id = impl.bos_id(), impl.eos_id()
            self.pad_id = impl.pad_id() if impl.pad_id() >= 0 else None
        else:
            self.vocab_size = len(impl)
            self.bos_id, self.eos_id, self.pad_id = impl.bos_token_id, impl.eos_token_id, impl.pad_token_id
        if add_bos and (self.bos_id is None or self.bos_id < 0):
            raise UserError(f"tokenizer {path} has no BOS token; set data.tokenizer.add_bos: false")
        if add_eos and (self.eos_id is None or self.eos_id < 0):
            raise UserError(f"tokenizer {path} has no EOS token; set data.tokenizer.add_eos: false")

    def encode_raw(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, no special tokens."""
        if self.kind == "sentencepiece":
            return self.impl.encode(texts, num_threads=self.threads)
        # verbose=False: whole documents are longer than model_max_length by design (cut into windows later)
        return self.impl(texts, add_special_tokens=False, verbose=False)["input_ids"]

    def encode_documents(self, texts: list[str]) -> list[list[int]]:
        """Each text framed as a document: [BOS] tokens [EOS], BOS never doubled."""
        out = []
        for ids in self.encode_raw(texts):
            if self.add_bos and (not ids or ids[0] != self.bos_id):
                ids = [self.bos_id, *ids]
            if self.add_eos:
                ids = [*ids, self.eos_id]
            out.append(ids)
        return out

    def decode(self, ids: list[int]) -> str:
        if self.kind == "sentencepiece":
            return self.impl.decode([int(i) for i in ids])
        return self.impl.decode([int(i) for i in ids], skip_special_tokens=False)

    def ordinary_ids(self) -> np.ndarray:
        """Ids of plain text pieces: no control, unknown or byte-fallback pieces, no HF special tokens."""
        if self.kind == "sentencepiece":
            sp = self.impl
            keep = [i for i in range(self.vocab_size) if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))]
        else:
            special = set(self.impl.all_special_ids)
            keep = [i for i in range(self.vocab_size) if i not in special]
        return np.asarray(keep, dtype=np.int64)

    @property
    def fingerprint(self) -> str:
        """sha256 (16 hex) of what decides token ids; see the class docstring."""
        if self._fingerprint is None:
            if self.kind == "sentencepiece":
                pieces = [self.impl.id_to_piece(i) for i in range(self.vocab_size)]
                unk = self.impl.unk_id()
            else:
                pieces = self.impl.convert_ids_to_tokens(list(range(self.vocab_size)))
                unk = self.impl.unk_token_id
            # SentencePiece writes a space as ▁; a byte-level BPE as Ġ: both are the piece's own text
            ids = {"pieces": pieces, "special": [self.bos_id, self.eos_id, self.pad_id, unk],
                   "framing": [self.add_bos, self.add_eos], "probe": self.encode_documents([PROBE_TEXT])[0]}
            blob = json.dumps(ids, ensure_ascii=False, default=int).encode()
            self._fingerprint = hashlib.sha256(blob).hexdigest()[:16]
        return self._fingerprint

    def describe(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "fingerprint": self.fingerprint,
                "vocab_size": self.vocab_size, "bos_id": self.bos_id, "eos_id": self.eos_id,
                "pad_id": self.pad_id, "add_bos": self.add_bos, "add_eos": self.add_eos}


def load_sentencepiece(path: Path, add_bos: bool | None = None, add_eos: bool | None = None, threads: int = 2,
                       where: str | None = None) -> Tokenizer:
    """A SentencePiece model file as a `Tokenizer`, fingerprinted by its bytes. BOS/EOS framing as
    given, or (None) wherever the model defines the token. `where` names the file in errors (the
    recipe key that gave it, say)."""
    import sentencepiece as spm  # deferred: only SentencePiece tokenizers need it

    where = where or str(path)
    if not path.is_file():
        raise UserError(f"{where}: SentencePiece model not found")
    blob = path.read_bytes()
    try:
        sp = spm.SentencePieceProcessor(model_proto=blob)
    except Exception:
        raise UserError(f"{where}: not a SentencePiece model") from None
    add_bos = sp.bos_id() >= 0 if add_bos is None else add_bos
    add_eos = sp.eos_id() >= 0 if add_eos is None else add_eos
    return Tokenizer("sentencepiece", sp, path, hashlib.sha256(blob).hexdigest()[:16], add_bos, add_eos, threads)


def hf_tokenizer_dir(name: str) -> Path:
    """The folder of an `hf` tokenizer: a local folder, or a hub name resolved in the local
    Hugging Face cache (`lsa_ds.data.hub`; an uncached name is refused in one line)."""
    return hub.resolve(name, "data.tokenizer.path", expect=hub.TOKENIZER_FILES)


def _load_hf(path: Path, data: DataConfig) -> Tokenizer:
    # deferred: transformers only for HF tokenizers (`lsa prepare` with SentencePiece never needs it)
    from transformers import AutoTokenizer

    if not path.is_dir():
        raise UserError(f"data.tokenizer.path: HF tokenizer folder '{path}' not found")
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:
        raise UserError(f"data.tokenizer.path: cannot load a tokenizer from '{path}' ({type(e).__name__})") from None
    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return Tokenizer("hf", tok, path, h.hexdigest()[:16], data.tokenizer.add_bos, data.tokenizer.add_eos, data.threads)


def tokenizer_sources(data: DataConfig) -> list:
    """The sources a SentencePiece model learns from: those without `repeat` (repeated spans are
    derived text; the vocabulary must not change when they are added or changed, or a stage that
    adds them could not continue from one without). If every source repeats, their plain text."""
    natural = [s for s in data.sources if s.repeat is None]
    return natural or [s.model_copy(update={"repeat": None}) for s in data.sources]


def tokenizer_cache_path(data: DataConfig, source_fingerprints: list[dict]) -> Path:
    """Where a trained SentencePiece model for these sources and options lives."""
    opts = data.tokenizer.model_dump(mode="json", exclude={"add_bos", "add_eos", "path"})
    key = json.dumps({"sources": source_fingerprints, "opts": opts, "trainer": _SPM_LOSSLESS}, sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(data.cache_dir) / "tokenizers" / f"spm-{digest}" / SPM_FILE


def train_spm(data: DataConfig, out: Path) -> None:
    """Train SentencePiece on training-split text of the sources; written atomically to `out`."""
    # deferred: only training a SentencePiece model needs the trainer
    import sentencepiece as spm


    sources = tokenizer_sources(data)
    texts = list(sample_text(sources, data.tokenizer.train_chars))
    if not texts:
        where = ", ".join(f"'{s.name}' ({s.path or s.type})" for s in sources)
        first = next((f"{r.key}: {r.skip}" for s in sources for _, r in iter_records(s) if r.skip), None)
        why = f"; first skipped record: {first}" if first else ""
        raise UserError(f"no documents to train the tokenizer on: sources {where} yield no training-split text{why}")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=model, vocab_size=data.tokenizer.vocab_size,
            model_type=data.tokenizer.model_type, num_threads=data.threads, **_SPM_LOSSLESS)
    except RuntimeError as e:
        # e.g. "Vocabulary size is smaller than required_chars" on a tiny corpus
        raise UserError(f"data.tokenizer.vocab_size={data.tokenizer.vocab_size}: SentencePiece training failed ({str(e).splitlines()[-1]})") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_bytes(model.getvalue())
    os.replace(tmp, out)


def load_tokenizer(data: DataConfig, source_fingerprints: list[dict] | None = None, train: bool = False) -> Tokenizer:
    """The recipe's tokenizer. A SentencePiece model without `path` is trained (when `train`) or
    must already be in the cache. `source_fingerprints`: of `tokenizer_sources(data)`."""
    tcfg = data.tokenizer
    if tcfg.type == "hf":
        if not tcfg.path:
            raise UserError("data.tokenizer.path: an HF tokenizer folder or hub name is required for type 'hf'")
        return _load_hf(hf_tokenizer_dir(tcfg.path), data)
    framing = {"add_bos": tcfg.add_bos, "add_eos": tcfg.add_eos, "threads": data.threads}
    if tcfg.path:
        path = Path(tcfg.path).expanduser()
        return load_sentencepiece(path, **framing, where=f"data.tokenizer.path: '{path}'")
    if source_fingerprints is None:
        source_fingerprints = [source_fingerprint(s) for s in tokenizer_sources(data)]
    path = tokenizer_cache_path(data, source_fingerprints)
    if not path.is_file():
        if not train:
            raise UserError(f"tokenizer not trained yet ({path}); run `lsa prepare` first")
        train_spm(data, path)
    return load_sentencepiece(path, **framing)


def to_hf_tokenizer(tok: Tokenizer):
    """The tokenizer as a `transformers` fast tokenizer, so `AutoTokenizer.from_pretrained` loads an
    exported folder. A SentencePiece BPE model is rebuilt in `tokenizers` with the same pieces,
    merges and byte fallback, and the same lossless framing (spaces become ▁, nothing else changes).
    `tokenizer(text)` frames text as training did: BOS first (when `add_bos`), no EOS — as LLaMA
    tokenizers do, so a prompt does not end the document; the EOS id is set for `generate`."""
    if tok.kind == "hf":
        return tok.impl
    # deferred: only exports build an HF tokenizer
    from tokenizers import AddedToken, decoders, normalizers, processors
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    if tok.impl.get_piece_size() and tok.impl.id_to_piece(0) != "<unk>":
        raise UserError(f"{tok.path}: only SentencePiece models trained by lsa-ds can be exported as HF tokenizers")
    spec = SentencePieceExtractor(str(tok.path)).extract(BPE)
    rust = RustTokenizer(BPE(vocab=spec["vocab"], merges=spec["merges"], byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    rust.normalizer = normalizers.Replace(" ", "▁")
    rust.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    special = [tok.impl.id_to_piece(i) for i in range(tok.vocab_size) if tok.impl.is_control(i) or tok.impl.is_unknown(i)]
    rust.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    rust.add_tokens([AddedToken("\n", normalized=False, special=False)])
    bos = tok.impl.id_to_piece(tok.bos_id)
    # The template lives in tokenizer.json too, so tools reading it without transformers frame text alike.
    rust.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A" if tok.add_bos else "$A", pair=f"{bos} $A {bos} $B" if tok.add_bos else "$A $B",
        special_tokens=[(bos, tok.bos_id)] if tok.add_bos else [])
    names = {"bos_token": tok.bos_id, "eos_token": tok.eos_id, "unk_token": tok.impl.unk_id(), "pad_token": tok.pad_id}
    return PreTrainedTokenizerFast(tokenizer_object=rust, add_bos_token=tok.add_bos, add_eos_token=False,
                                   **{k: tok.impl.id_to_piece(v) for k, v in names.items() if v is not None and v >= 0})
