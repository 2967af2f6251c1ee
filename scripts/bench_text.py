#!/usr/bin/env python3
"""Detokenizer and stop-string matcher µs per token on Korean output (both tokenizers); prints a Markdown table.

Same code as `koserve bench text`. Needs the tokenizer fixtures (`koserve setup fixtures`).
"""

from __future__ import annotations

import sys

from koserve.cli.bench import text_main

if __name__ == "__main__":
    sys.exit(text_main(sys.argv[1:]))
