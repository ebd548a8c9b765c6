"""The SentencePiece wrapper against Hugging Face's tokenizer, and streaming detokenization."""

from __future__ import annotations

import json

import pytest
import sentencepiece as spm

from gemma_server.errors import ConfigurationError
from gemma_server.model.synthetic import (
    GEMMA2_LAYOUT_TOKENIZER,
    GEMMA3_LAYOUT_TOKENIZER,
    asset_path,
)
from gemma_server.tokenizer import GemmaTokenizer, IncrementalDetokenizer
from tests.conftest import GOLDENS

LAYOUTS = {"gemma2": GEMMA2_LAYOUT_TOKENIZER, "gemma3": GEMMA3_LAYOUT_TOKENIZER}


@pytest.fixture(scope="module", params=list(LAYOUTS))
def layout(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def tokenizer(layout) -> GemmaTokenizer:
    return GemmaTokenizer(asset_path(LAYOUTS[layout]))


def test_ids_equal_hugging_face_tokenizer(tokenizer, layout):
    cases = json.loads((GOLDENS / f"tokenizer_{layout}_layout.json").read_text())["cases"]
    for case in cases:
        expected = case["ids"]
        if expected[:2] == [2, 2]:
            expected = expected[1:]  # HF doubles a literal leading <bos>; we keep exactly one
        assert tokenizer.encode(case["text"]) == expected, case["text"]


def test_turn_marker_ids_come_from_the_model_file(tokenizer, layout):
    expected = {"gemma2": (106, 107), "gemma3": (105, 106)}[layout]
    assert (tokenizer.start_of_turn_id, tokenizer.end_of_turn_id) == expected


@pytest.mark.parametrize("text, piece", [
    ("<start_of_turn>", "<start_of_turn>"), ("<end_of_turn>", "<end_of_turn>"),
    ("<bos>", "<bos>"), ("<eos>", "<eos>"),
])
def test_special_token_text_is_one_id(tokenizer, text, piece):
    assert tokenizer.encode(text, add_bos=False) == [tokenizer.token_id(piece)]


def test_exactly_one_bos(tokenizer):
    assert tokenizer.encode("hello").count(2) == 1
    assert tokenizer.encode("<bos>hello") == tokenizer.encode("hello")
    assert tokenizer.encode("") == [2]
    assert tokenizer.encode("hello", add_bos=False)[0] != 2


def test_decode_matches_sentencepiece_on_valid_text(tokenizer):
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer.path))
    for text in ["Hello world!", " two  spaces\n\ttab", "naïve café 日本語 🙂", "x<end_of_turn>y"]:
        ids = tokenizer.encode(text, add_bos=False)
        assert tokenizer.decode(ids) == sp.decode(ids) == text


def test_streaming_detokenization_never_emits_half_a_character(tokenizer):
    text = "naïve café 日本語 🙂"
    ids = tokenizer.encode(text)
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.add(i) for i in ids] + [detok.flush()]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == tokenizer.decode(ids) == text
    # The emoji is four byte-fallback tokens: the first three produce nothing.
    assert deltas[-5:] == ["", "", "", "🙂", ""]


def test_streaming_matches_full_decode_on_invalid_bytes(tokenizer):
    byte = {b: tokenizer.token_id(f"<0x{b:02X}>") for b in (0xF0, 0x9F, 0xE6, 0x41)}
    ids = [byte[0xF0], byte[0x9F], byte[0x41], byte[0xE6]]  # broken 4-byte run, then 'A'
    detok = IncrementalDetokenizer(tokenizer)
    joined = "".join(detok.add(i) for i in ids) + detok.flush()
    assert joined == tokenizer.decode(ids) == "\ufffdA\ufffd"


def test_ids_beyond_the_tokenizer_decode_to_nothing(tokenizer):
    assert tokenizer.decode([tokenizer.vocab_size + 5]) == ""


def test_not_a_gemma_tokenizer_is_refused(tmp_path):
    bogus = tmp_path / "tokenizer.model"
    bogus.write_bytes(b"not a model")
    with pytest.raises(ConfigurationError, match="not a SentencePiece model"):
        GemmaTokenizer(bogus)
