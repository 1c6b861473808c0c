"""Per-request streamed text: incremental detokenization and stop strings."""

from __future__ import annotations

from radixfair.tokenization import IncrementalDetokenizer


class TextStream:
    """Emits text deltas and spots stop strings.

    Text that could still turn out to be the start of a stop string is held
    back until the next token decides it, so a stop string never leaks into
    the stream.
    """

    def __init__(self, detokenizer: IncrementalDetokenizer, stop_strings: tuple[str, ...]) -> None:
        self._detokenizer = detokenizer
        self._stops = stop_strings
        self._holdback = max((len(s) for s in stop_strings), default=1) - 1
        self._emitted = 0
        self.final_text: str | None = None

    def push(self, token_ids: list[int]) -> tuple[str, bool]:
        """Adds tokens; returns (text delta, whether a stop string was reached)."""
        self._detokenizer.push(token_ids)
        text = self._detokenizer.text
        for stop in self._stops:
            # Search from where the stop string could first overlap new text.
            at = text.find(stop, max(0, self._emitted - len(stop)))
            if at >= 0:
                self.final_text = text[:at]
                return self._emit_upto(at), True
        return self._emit_upto(len(text) - self._holdback), False

    def flush(self) -> str:
        """The held-back remainder, once generation has ended for another reason."""
        text = self._detokenizer.text
        self.final_text = text
        return self._emit_upto(len(text))

    @property
    def text(self) -> str:
        return self.final_text if self.final_text is not None else self._detokenizer.text

    def _emit_upto(self, end: int) -> str:
        if end <= self._emitted:
            return ""
        delta = self._detokenizer.text[self._emitted : end]
        self._emitted = end
        return delta
