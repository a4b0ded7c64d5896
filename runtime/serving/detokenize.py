"""Turning a growing list of token ids into stable text deltas, with stop sequences.

Decoding token by token breaks multi-byte characters and word-joining spaces, so we
decode a small window (TGI's prefix/read offsets) and emit only text that can no longer
change. Text that might be the start of a stop sequence is held back until it either
completes the stop (generation ends there) or stops matching.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class TextTracker:
    """Accumulates generated tokens; ``push`` returns the text safe to show now."""

    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stop = tuple(stop)
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._text = ""
        self._emitted = 0
        self.is_stopped = False

    @property
    def text(self) -> str:
        """The generated text so far (cut before a stop sequence once one matched)."""
        return self._text

    def push(self, token_id: int) -> str:
        """Add one token; return newly visible text (possibly empty)."""
        if self.is_stopped:
            return ""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            searched_from = len(self._text)
            self._text += new_text[len(prefix_text) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            self._check_stop(searched_from)
        return self._visible()

    def flush(self) -> str:
        """The generation ended without a stop match: release held-back text."""
        if not self.is_stopped:
            # Bytes of an unfinished character are dropped, as every decoder does.
            tail = self._decode(self._ids[self._prefix_offset :])
            prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
            if len(tail) > len(prefix_text):
                self._text += tail[len(prefix_text) :].replace("\ufffd", "")
                self._prefix_offset = self._read_offset = len(self._ids)
        delta = self._text[self._emitted :]
        self._emitted = len(self._text)
        return delta

    def _check_stop(self, searched_from: int) -> None:
        for stop in self._stop:
            start = max(0, searched_from - len(stop) + 1)
            index = self._text.find(stop, start)
            if index >= 0:
                self._text = self._text[:index]
                self.is_stopped = True
                return

    def _visible(self) -> str:
        end = len(self._text)
        if not self.is_stopped:
            end -= _held_back(self._text, self._stop)
        if end <= self._emitted:
            return ""
        delta = self._text[self._emitted : end]
        self._emitted = end
        return delta


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest
