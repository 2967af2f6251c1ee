"""Text handling shared by the Triton models, the client and the engine stand-in.

- :func:`load_tokenizer` → :class:`TextTokenizer` (``tokenizers`` only, no transformers);
- :func:`stop_words_list` / :func:`bad_words_list` / :func:`batch_word_lists`: TensorRT-LLM word-list tensors;
- :class:`IncrementalDetokenizer`: token ids → text deltas (whole characters, constant cost per token);
- :class:`StopStringMatcher`: text deltas → text before the first stop string.
"""

from koserve.text.detokenizer import IncrementalDetokenizer
from koserve.text.stop_strings import StopStringMatcher
from koserve.text.stop_words import (
    bad_words_list,
    batch_word_lists,
    parse_word_list,
    stop_words_list,
    to_word_list,
    word_variants,
)
from koserve.text.tokenizer import TextTokenizer, load_tokenizer

__all__ = [
    "IncrementalDetokenizer",
    "StopStringMatcher",
    "TextTokenizer",
    "bad_words_list",
    "batch_word_lists",
    "load_tokenizer",
    "parse_word_list",
    "stop_words_list",
    "to_word_list",
    "word_variants",
]
