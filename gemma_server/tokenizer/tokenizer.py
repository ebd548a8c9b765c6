"""The Gemma SentencePiece tokenizer, with special tokens handled as Hugging Face does.

SentencePiece itself matches user-defined pieces such as `<start_of_turn>` inside text, but not
control symbols such as `<bos>` and `<eos>`. Hugging Face's tokenizer recognises all of them as
added tokens, so raw prompts written with `<bos>` or `<start_of_turn>` mean the same here as
there: we split the text on every special-token string, encode the pieces between with
SentencePiece, and put the special ids in between. Exactly one BOS starts an encoded prompt: a
literal leading `<bos>` takes the place of the added one instead of doubling it.

Ids of `<start_of_turn>`/`<end_of_turn>` are read from the model file, since they differ
between Gemma 1/2 (106/107) and Gemma 3 (105/106).
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path

import sentencepiece as spm

from gemma_server.errors import ConfigurationError

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class GemmaTokenizer:
    def __init__(self, model_file: str | Path):
        self.path = Path(model_file)
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (OSError, RuntimeError) as exc:
            raise ConfigurationError(f"{model_file}: not a SentencePiece model ({exc})") from None
        expected = {PAD_ID: "<pad>", EOS_ID: "<eos>", BOS_ID: "<bos>", UNK_ID: "<unk>"}
        for token_id, piece in expected.items():
            if self._sp.id_to_piece(token_id) != piece:
                raise ConfigurationError(
                    f"{model_file}: id {token_id} is {self._sp.id_to_piece(token_id)!r}, "
                    f"expected {piece!r} (not a Gemma tokenizer)"
                )
        self.start_of_turn_id = self._required_id(START_OF_TURN)
        self.end_of_turn_id = self._required_id(END_OF_TURN)
        self._special = self._special_pieces()
        self._split = re.compile("(" + "|".join(
            re.escape(p) for p in sorted(self._special, key=len, reverse=True)) + ")")

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    @property
    def bos_id(self) -> int:
        return BOS_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    def _required_id(self, piece: str) -> int:
        token_id = int(self._sp.piece_to_id(piece))
        if token_id == UNK_ID:
            raise ConfigurationError(f"{self.path}: the model has no {piece} piece")
        return token_id

    def _special_pieces(self) -> dict[str, int]:
        """Pieces SentencePiece will not match in text but HF does: control symbols and <unk>.

        User-defined pieces (`<start_of_turn>`, `<unusedN>`, ...) need no help: SentencePiece
        already matches them atomically. The turn markers are listed anyway so that a model
        file which declares them as control symbols still behaves.
        """
        special = {START_OF_TURN: self.start_of_turn_id, END_OF_TURN: self.end_of_turn_id}
        for i in range(self.vocab_size):
            if self._sp.is_control(i) or self._sp.is_unknown(i):
                special[self._sp.id_to_piece(i)] = i
        return special

    def piece(self, token_id: int) -> str:
        return str(self._sp.id_to_piece(token_id))

    def token_id(self, piece: str) -> int | None:
        """Id of an exact piece, or None when the vocabulary lacks it."""
        token_id = int(self._sp.piece_to_id(piece))
        return None if token_id == UNK_ID and piece != "<unk>" else token_id

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids of `text`; special-token strings in it become their ids."""
        ids: list[int] = []
        for part in self._split.split(text):
            if not part:
                continue
            if part in self._special:
                ids.append(self._special[part])
            else:
                ids.extend(self._sp.encode(part))
        if add_bos and (not ids or ids[0] != BOS_ID):
            ids.insert(0, BOS_ID)
        return ids

    def encode_plain(self, text: str) -> list[int]:
        """Token ids of `text` read as plain characters: special-token strings in it are
        encoded as ordinary text, never as their control ids (no prompt injection)."""
        ids: list[int] = []
        for part in self._split.split(text):
            if not part:
                continue
            if part in self._special:  # "<" alone, then the rest: no piece matches the whole
                ids.extend(self._sp.encode(part[0]))
                ids.extend(self._sp.encode(part[1:]))
            else:
                ids.extend(self._sp.encode(part))
        return ids

    def encode_segments(self, segments: list[tuple[str, bool]]) -> list[int]:
        """A templated prompt: template pieces with special tokens, content as plain text."""
        ids: list[int] = []
        for text, is_content in segments:
            ids.extend(self.encode_plain(text) if is_content else self.encode(text, False))
        if not ids or ids[0] != BOS_ID:
            ids.insert(0, BOS_ID)
        return ids

    @cached_property
    def id_bytes(self) -> list[bytes]:
        """UTF-8 bytes each id decodes to: the basis of `decode` and streaming detokenization.

        Control tokens (`<bos>`, `<eos>`, `<pad>`) decode to nothing, as in SentencePiece;
        byte-fallback pieces to their byte; other pieces to their text with '▁' as a space.
        """
        table = []
        for i in range(self.vocab_size):
            piece = self.piece(i)
            match = _BYTE_PIECE.match(piece)
            if match:
                table.append(bytes([int(match.group(1), 16)]))
            elif self._sp.is_control(i):
                table.append(b"")
            elif self._sp.is_unknown(i):
                table.append(" \u2047 ".encode())  # SentencePiece's rendering of <unk>
            else:
                table.append(piece.replace("\u2581", " ").encode())
        return table

    def token_bytes(self, token_id: int) -> bytes:
        if 0 <= token_id < self.vocab_size:
            return self.id_bytes[token_id]
        return b""  # ids past the tokenizer (Gemma 3's image rows) have no text

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`; invalid UTF-8 byte runs become U+FFFD."""
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")
