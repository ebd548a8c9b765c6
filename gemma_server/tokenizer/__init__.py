"""Text side of the model: SentencePiece tokenizer, chat template, streaming detokenizer."""

from gemma_server.tokenizer.chat_template import ChatMessage, render_chat, render_chat_segments
from gemma_server.tokenizer.detokenizer import IncrementalDetokenizer
from gemma_server.tokenizer.stops import stop_ids
from gemma_server.tokenizer.tokenizer import GemmaTokenizer

__all__ = [
    "ChatMessage",
    "GemmaTokenizer",
    "IncrementalDetokenizer",
    "render_chat",
    "render_chat_segments",
    "stop_ids",
]
