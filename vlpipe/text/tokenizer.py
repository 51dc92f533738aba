"""`TextTokenizer`: any HF `tokenizers.Tokenizer` plus the special ids the rest of vlpipe needs.

The cache stores token ids, and the model and the MLM task must know which ids mean
[PAD]/[CLS]/[SEP]/[MASK]. Those ids are looked up here, by token name, in the tokenizer itself
instead of assuming BERT's numbering; that is what lets any HF tokenizer be injected
(`TextTokenizer.from_hf`) and lets a cache's `tokenizer.json` be read back without vlpipe.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer, processors

from vlpipe.errors import VlpipeError
from vlpipe.utils.atomic import atomic_path, sha256_file

# Accepted names per role, in order of preference: BERT's, open_clip's, then RoBERTa-style.
SPECIAL_TOKEN_NAMES: dict[str, tuple[str, ...]] = {
    "pad": ("[PAD]", "<pad>"),
    "cls": ("[CLS]", "<start_of_text>", "<s>"),
    "sep": ("[SEP]", "<end_of_text>", "</s>"),
    "mask": ("[MASK]", "<mask>"),
    "unk": ("[UNK]", "<unk>"),
}


class TextTokenizer:
    """A caption tokenizer that always frames a caption as `[CLS] tokens [SEP]`.

    Build one with `load_tokenizer(spec)`, `TextTokenizer.from_hf(tokenizer, spec=...)` or
    `TextTokenizer.load(path)`; the wrapped tokenizer is a private copy, so later changes to the
    object passed in do not silently change the ids written to a cache.
    """

    def __init__(self, tokenizer: Tokenizer, spec: str, source: str | None = None) -> None:
        self.spec = spec
        where = source or f"tokenizer {spec!r}"
        self._tokenizer = Tokenizer.from_str(tokenizer.to_str())
        # Truncation/padding are applied per call in encode_batch; stored ones would leak into
        # the saved tokenizer.json and make its sha256 depend on what was encoded before.
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()

        self.pad_token, self.pad_id = _find_special(self._tokenizer, "pad", where)
        self.cls_token, self.cls_id = _find_special(self._tokenizer, "cls", where)
        self.sep_token, self.sep_id = _find_special(self._tokenizer, "sep", where)
        self.mask_token, self.mask_id = _find_special(self._tokenizer, "mask", where)
        # Optional: a byte-level BPE (open_clip's) can spell any string, so it has no unknown token.
        self.unk_token, self.unk_id = _lookup(self._tokenizer, "unk") or (None, None)

        # Whatever post-processor the source had, captions are framed the same way, so the
        # position of [CLS] and [SEP] never depends on where the tokenizer came from.
        cls, sep = self.cls_token, self.sep_token
        self._tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}",
            pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, self.cls_id), (sep, self.sep_id)],
        )
        self._truncating: dict[int, Tokenizer] = {}

    @classmethod
    def from_hf(cls, tokenizer: Tokenizer, spec: str = "custom") -> TextTokenizer:
        """Wrap any `tokenizers.Tokenizer` whose vocabulary has [PAD]/[CLS]/[SEP]/[MASK] (or equivalents)."""
        return cls(tokenizer, spec=spec)

    @classmethod
    def load(cls, path: str | os.PathLike[str], spec: str | None = None) -> TextTokenizer:
        """Read a `tokenizer.json` (e.g. the one inside a cache)."""
        path = Path(path)
        if not path.is_file():
            raise VlpipeError(f"{path}: tokenizer file not found")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises bare Exception on malformed JSON
            raise VlpipeError(f"{path}: not a valid HF tokenizers tokenizer.json ({exc})") from exc
        return cls(tokenizer, spec=spec or str(path), source=str(path))

    @property
    def hf(self) -> Tokenizer:
        """The wrapped HF tokenizer (with the [CLS]/[SEP] post-processor), for decoding or inspection."""
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included: the size the model's embedding table needs."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def token_dtype(self) -> str:
        """The dtype of tokens.npy in a cache built with this tokenizer (the format decides)."""
        from vlpipe.cache.format import token_dtype

        return token_dtype(self.vocab_size)

    def encode_batch(self, texts: Iterable[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids `(n, max_len)` int64, right-padded with `pad_id`, and real lengths `(n,)` int64.

        Captions longer than `max_len` are truncated inside the tokenizer before [SEP] is added,
        so every row still ends its real tokens with [SEP].
        """
        if max_len < 2:
            raise VlpipeError(f"max_len must be at least 2 (room for {self.cls_token} and {self.sep_token}), got {max_len}")
        texts = list(texts)
        try:
            encodings = self._truncating_tokenizer(max_len).encode_batch_fast(texts)
        except TypeError as exc:
            raise VlpipeError(describe_bad_caption(texts)) from exc
        rows = [encoding.ids for encoding in encodings]
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
        ids = np.full((len(rows), max_len), self.pad_id, dtype=np.int64)
        # A boolean mask assigns in row-major order, which is exactly the order of `flat`.
        ids[np.arange(max_len) < lengths[:, None]] = flat
        return ids, lengths

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text for a row of ids (padding and framing dropped by default)."""
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def save(self, path: str | os.PathLike[str]) -> str:
        """Write `tokenizer.json` atomically and return its sha256 (for the cache manifest)."""
        with atomic_path(path) as tmp:
            self._tokenizer.save(str(tmp), pretty=True)
        return sha256_file(path)

    def to_manifest(self) -> dict[str, Any]:
        """The tokenizer part of the cache manifest's "text" section (docs/cache-format.md)."""
        return {
            "tokenizer_spec": self.spec,
            "vocab_size": self.vocab_size,
            "dtype": self.token_dtype,
            "pad_id": self.pad_id,
            "cls_id": self.cls_id,
            "sep_id": self.sep_id,
            "mask_id": self.mask_id,
            "unk_id": self.unk_id,
        }

    def _truncating_tokenizer(self, max_len: int) -> Tokenizer:
        """A copy with truncation at `max_len`, so the Rust batch encoder truncates (kept per length)."""
        if max_len not in self._truncating:
            copy = Tokenizer.from_str(self._tokenizer.to_str())
            copy.enable_truncation(max_len)
            self._truncating[max_len] = copy
        return self._truncating[max_len]

    def __repr__(self) -> str:
        return (
            f"TextTokenizer(spec={self.spec!r}, vocab_size={self.vocab_size}, pad_id={self.pad_id}, "
            f"cls_id={self.cls_id}, sep_id={self.sep_id}, mask_id={self.mask_id}, unk_id={self.unk_id})"
        )


def describe_bad_caption(captions: Iterable[object]) -> str:
    """Name the first caption the Rust tokenizer cannot take (only called once something failed)."""
    for index, caption in enumerate(captions):
        if not isinstance(caption, str):
            return f"caption {index} is {type(caption).__name__}, not a string"
        try:
            caption.encode("utf-8")
        except UnicodeEncodeError:
            return f"caption {index} is not valid Unicode (lone surrogate): {caption[:60]!r}"
    return "captions must be strings of valid Unicode"


def _lookup(tokenizer: Tokenizer, role: str) -> tuple[str, int] | None:
    """The first accepted name for `role` that the vocabulary knows, with its id."""
    for name in SPECIAL_TOKEN_NAMES[role]:
        token_id = tokenizer.token_to_id(name)
        if token_id is not None:
            return name, token_id
    return None


def _find_special(tokenizer: Tokenizer, role: str, where: str) -> tuple[str, int]:
    found = _lookup(tokenizer, role)
    if found is None:
        names = " or ".join(SPECIAL_TOKEN_NAMES[role])
        raise VlpipeError(f"{where}: has no {role} token (looked for {names})")
    return found
