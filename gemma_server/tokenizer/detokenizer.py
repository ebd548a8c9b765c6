"""Streaming detokenization that never emits half a character.

A 4-byte emoji arrives as four byte-fallback tokens, and a CJK character may be split across
pieces. We feed each token's bytes to an incremental UTF-8 decoder, which holds back an
incomplete sequence until its last byte arrives. Because that decoder is the same algorithm as
`bytes.decode(errors="replace")`, the concatenated deltas always equal `tokenizer.decode(ids)`,
invalid byte runs included (each becomes U+FFFD at the same place).
"""

from __future__ import annotations

import codecs

from gemma_server.tokenizer.tokenizer import GemmaTokenizer


class IncrementalDetokenizer:
    """Feed token ids one at a time; get back the text that became complete."""

    def __init__(self, tokenizer: GemmaTokenizer):
        self._tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_id: int) -> str:
        """Text completed by this token (often "", while a multi-byte character is pending)."""
        return str(self._decoder.decode(self._tokenizer.token_bytes(token_id)))

    def flush(self) -> str:
        """At the end of a stream: whatever is pending, an incomplete character as U+FFFD."""
        return str(self._decoder.decode(b"", final=True))
