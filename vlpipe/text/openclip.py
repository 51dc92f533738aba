"""open_clip's bundled BPE vocabulary as an HF `tokenizers` tokenizer with the same ids.

open_clip tokenizes in Python, one caption at a time; rebuilding its vocabulary and merges as a
Rust BPE gives the same ids for ordinary captions at batch speed, and lets the cache ship the
result as a plain tokenizer.json. Only the file is read: open_clip itself (and torch) is not
imported.

What open_clip does that this does not: `ftfy.fix_text` beyond curly quotes (mojibake repair,
ligatures, full-width characters), HTML unescaping beyond the common entities, and Python's
context-dependent final sigma when lowercasing Greek capitals. Captions that need those may
tokenize differently; ordinary text does not. Like every HF tokenizer (and unlike open_clip),
the literal strings "[PAD]" and "[MASK]" in a caption map to those special ids.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from vlpipe.errors import VlpipeError

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
START_OF_TEXT = "<start_of_text>"
END_OF_TEXT = "<end_of_text>"
# open_clip keeps the first 49152 - 256 - 2 merges of the file (line 0 is a header), which with
# 512 byte tokens and its two specials gives its 49408-token vocabulary.
NUM_MERGES = 49152 - 256 - 2
# Added after open_clip's own ids, so those stay unchanged: [PAD] = 49408, [MASK] = 49409.
ADDED_TOKENS = ("[PAD]", "[MASK]")
END_OF_WORD = "</w>"
# open_clip's word pattern: contractions, letter runs, single digits, runs of other symbols.
WORD_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# ftfy's uncurl_quotes (open_clip runs ftfy first): curly single and double quotes to straight.
CURLY_QUOTES = {"\u02bc": "'", "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
                "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"'}
# open_clip unescapes HTML twice (so "&amp;amp;" becomes "&"); the entities captions really carry.
HTML_ENTITIES = {"&quot;": '"', "&#39;": "'", "&#039;": "'", "&lt;": "<", "&gt;": ">", "&nbsp;": " "}


def openclip_tokenizer() -> Tokenizer:
    """A byte-level BPE over open_clip's vocabulary: open_clip's ids, plus [PAD] and [MASK]."""
    merges = _read_merges(_bpe_file())
    byte_symbols = list(byte_to_symbol().values())
    vocab_list = [
        *byte_symbols,
        *(symbol + END_OF_WORD for symbol in byte_symbols),
        *("".join(pair) for pair in merges),
        START_OF_TEXT,
        END_OF_TEXT,
    ]
    # No unknown token: every string is spelled by its UTF-8 bytes, each of which is in the vocab.
    model = models.BPE(
        vocab={token: index for index, token in enumerate(vocab_list)},
        merges=merges,
        end_of_word_suffix=END_OF_WORD,
        fuse_unk=False,
    )
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Sequence(
        [
            normalizers.NFC(),
            *(normalizers.Replace(curly, straight) for curly, straight in CURLY_QUOTES.items()),
            # "&amp;" twice, first, mirrors open_clip's double html.unescape.
            normalizers.Replace("&amp;", "&"),
            normalizers.Replace("&amp;", "&"),
            *(normalizers.Replace(entity, text) for entity, text in HTML_ENTITIES.items()),
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Strip(),
            normalizers.Lowercase(),
        ]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # Keep the pattern's matches as words and drop everything between them (spaces).
            pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    # Bytes back to text first (that joins the tokens), then word ends back to spaces, as open_clip.
    tokenizer.decoder = decoders.Sequence(
        [decoders.ByteLevel(), decoders.Replace(END_OF_WORD, " "), decoders.Strip(" ", 0, 1)]
    )
    tokenizer.add_special_tokens([AddedToken(token, special=True) for token in (START_OF_TEXT, END_OF_TEXT)])
    tokenizer.add_special_tokens([AddedToken(token, special=True) for token in ADDED_TOKENS])
    return tokenizer


def byte_to_symbol() -> dict[int, str]:
    """GPT-2/CLIP's byte -> printable character table, in the order that fixes the byte token ids.

    Printable Latin-1 bytes stand for themselves; the others (controls, space, ...) are moved to
    code points from 256 up, so every byte has a visible, non-space symbol for the BPE to merge.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {byte: chr(byte) for byte in printable}
    for offset, byte in enumerate(b for b in range(256) if b not in table):
        table[byte] = chr(256 + offset)
    return table


def _read_merges(path: Path) -> list[tuple[str, str]]:
    try:
        lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")[1 : NUM_MERGES + 1]
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise VlpipeError(f"{path}: cannot read open_clip's BPE merges ({exc})") from exc
    merges = [tuple(line.split()) for line in lines]
    if len(merges) != NUM_MERGES or any(len(pair) != 2 for pair in merges):
        raise VlpipeError(f"{path}: expected {NUM_MERGES} merge lines of two symbols; reinstall open_clip_torch")
    return merges  # type: ignore[return-value]


def _bpe_file() -> Path:
    """The merges file inside the installed open_clip package, found without importing it."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise VlpipeError("tokenizer 'openclip' needs open_clip: pip install open_clip_torch")
    path = Path(next(iter(spec.submodule_search_locations))) / BPE_FILE
    if not path.is_file():
        raise VlpipeError(f"{path}: missing from the open_clip install; reinstall open_clip_torch")
    return path
