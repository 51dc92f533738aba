"""The tokenizer interface: any HF `tokenizers` tokenizer behind `TextTokenizer` (see docs/architecture.md)."""

from vlpipe.text.specs import ACCEPTED_FORMS, load_tokenizer
from vlpipe.text.tokenizer import TextTokenizer

__all__ = ["ACCEPTED_FORMS", "TextTokenizer", "load_tokenizer"]
