"""Log-probabilities of tokens under the model, as `logprobs` answers report them.

Each token's record holds its id, its log-probability (a log-softmax over the model's raw logits at
that position, before temperature and top-p), the most likely alternatives there, and where its text
sits in the decoded sequence. The prompt's records come from one forward pass over the prompt; the
completion's from the logits of each generation step, which `LogprobRecorder` sees as a logits
processor. Turning ids into the strings and bytes the API shows is `TokenSpelling`'s job.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessor
from transformers.convert_slow_tokenizer import bytes_to_unicode

SCORE_ROWS = 256  # prompt positions turned into log-probabilities at once: bounds the float32 copy of the logits
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@dataclass(frozen=True)
class TokenLogprob:
    """One token of a sequence: its log-probability, the `k` most likely tokens at its position (most
    likely first), and its span of characters in the sequence's text."""

    token_id: int
    logprob: float | None  # None for a prompt's first token: nothing precedes it
    top: list[tuple[int, float]]
    span: tuple[int, int]  # (start, end); tokens that share one multi-byte character share its span


class TokenSpelling:
    """How a tokenizer spells each token id in bytes, and as the text a `logprobs` answer shows.

    Byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM) stores each byte as a printable character; byte
    fallback (SentencePiece) writes a lone byte as `<0xE6>` and a space as `▁`. Special tokens are
    spelled as they read, and count for no text, as decoding skips them.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        decoder = getattr(backend, "decoder", None)
        state = decoder.__getstate__() if decoder is not None else b""
        self._byte_level = b'"ByteLevel"' in state
        self._byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
        added = getattr(tokenizer, "added_tokens_decoder", {})
        self.special_ids = frozenset(tokenizer.all_special_ids) | {i for i, t in added.items() if t.special}
        self._spelled: dict[int, bytes] = {}

    def bytes_of(self, token_id: int) -> bytes:
        """The UTF-8 bytes the token stands for (a fragment of a character for some tokens)."""
        spelled = self._spelled.get(token_id)
        if spelled is None:
            spelled = self._spelled[token_id] = self._spell(token_id)
        return spelled

    def _spell(self, token_id: int) -> bytes:
        piece = self._tokenizer.convert_ids_to_tokens(token_id)
        if piece is None:  # an id past the tokenizer's vocabulary (a padded embedding)
            return b""
        if token_id in self.special_ids:
            return str(piece).encode()
        if self._byte_level and all(char in self._byte_of for char in piece):
            return bytes(self._byte_of[char] for char in piece)
        if match := _BYTE_FALLBACK.fullmatch(piece):
            return bytes([int(match.group(1), 16)])
        return str(piece).replace("\u2581", " ").encode()

    def text_of(self, token_id: int) -> str:
        """The token as text; a fragment of a character as `bytes:\\xe6\\x97`, the way OpenAI shows it."""
        data = self.bytes_of(token_id)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{byte:02x}" for byte in data)


class TextSpans:
    """Where each token of a sequence, added in order, lands in the sequence's decoded text.

    A token that stops inside a multi-byte character is given that whole character, so the tokens that
    share a character share its span. Special tokens take no room in generated text, which is decoded
    without them, and read as they are spelled in a prompt (`with_special`).
    """

    def __init__(self, spelling: TokenSpelling, *, with_special: bool = False) -> None:
        self._spelling = spelling
        self._skipped = frozenset() if with_special else spelling.special_ids
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._chars = 0

    def add(self, token_id: int) -> tuple[int, int]:
        start = self._chars
        if token_id not in self._skipped:
            self._chars += len(self._decoder.decode(self._spelling.bytes_of(token_id)))
        inside_a_character = bool(self._decoder.getstate()[0])
        return start, self._chars + inside_a_character


def _record(row: torch.Tensor, token_id: int, top: int, vocab_size: int, span: tuple[int, int]) -> TokenLogprob:
    """`token_id`'s record from one position's log-probabilities `row` (V,)."""
    alternatives: list[tuple[int, float]] = []
    if top:
        values, ids = row[:vocab_size].topk(min(top, vocab_size))
        alternatives = list(zip(ids.tolist(), values.tolist(), strict=True))
    return TokenLogprob(token_id, float(row[token_id]), alternatives, span)


def prompt_logprobs(
    logits: torch.Tensor, prompt_ids: list[int], spelling: TokenSpelling, top: int, vocab_size: int
) -> list[TokenLogprob]:
    """Records for every prompt token from `logits` (T-1, V), the model's output on all but the last:
    position i predicts token i+1. The first token has no log-probability."""
    spans = TextSpans(spelling, with_special=True)
    records = [TokenLogprob(prompt_ids[0], None, [], spans.add(prompt_ids[0]))]
    for first in range(0, len(prompt_ids) - 1, SCORE_ROWS):
        rows = logits[first : first + SCORE_ROWS].float().log_softmax(-1)  # (R, V)
        for offset, row in enumerate(rows):
            token_id = prompt_ids[first + offset + 1]
            records.append(_record(row, token_id, top, vocab_size, spans.add(token_id)))
    return records


class LogprobRecorder(LogitsProcessor):
    """Records each generated token's log-probability from the logits `generate()` drew it from.

    Placed after generate's own logits processors and before its temperature and top-p warpers, it
    sees the model's distribution. A token is taken when it is known: by the stream as it arrives
    (`take`), else at the next step (its ids end with it), and the last one by the caller (`finish`).
    """

    def __init__(self, spelling: TokenSpelling, top: int, vocab_size: int) -> None:
        self.top = top
        self.vocab_size = vocab_size
        self.records: list[TokenLogprob] = []
        self._spans = TextSpans(spelling)
        self._row: torch.Tensor | None = None  # (V,) the last step's log-probabilities, until its token is taken

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._row is not None:
            self.take(int(input_ids[0, -1]))
        self._row = scores[0].float().log_softmax(-1)
        return scores

    def take(self, token_id: int) -> TokenLogprob:
        """The record of `token_id`, the token drawn at the last step."""
        if self._row is None:
            raise RuntimeError("a token was taken twice, or before any step drew it")
        record = _record(self._row, token_id, self.top, self.vocab_size, self._spans.add(token_id))
        self._row = None
        self.records.append(record)
        return record

    def finish(self, last_token_id: int) -> None:
        """Take the last generated token, unless the stream already did."""
        if self._row is not None:
            self.take(last_token_id)


def within_text(records: list[TokenLogprob], length: int) -> list[TokenLogprob]:
    """The records of the tokens that begin within the first `length` characters of their text: what
    is left of a generation that a stop sequence cut there."""
    return [record for record in records if record.span[0] < length]
