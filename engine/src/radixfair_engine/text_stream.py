"""Per-request streamed text: incremental detokenization and stop strings."""

from __future__ import annotations

from radixfair.tokenization import IncrementalDetokenizer


class TextStream:
    """Emits text deltas and spots stop strings.

    Text that could still turn out to be the start of a stop string is held
    back until the next token decides it, so a stop string never leaks into
    the stream. Invariant: once ``finish`` has run, the concatenation of
    every delta returned by ``push`` and ``finish`` equals ``final_text``,
    whatever ended the generation.
    """

    def __init__(self, detokenizer: IncrementalDetokenizer, stop_strings: tuple[str, ...]) -> None:
        self._detokenizer = detokenizer
        self._stops = stop_strings
        self._holdback = max((len(s) for s in stop_strings), default=1) - 1
        self._emitted = 0
        self.final_text: str | None = None

    def push(self, token_ids: list[int]) -> tuple[str, bool]:
        """Adds tokens; returns (text delta, whether a stop string was reached).

        When a stop string is reached the stream is finished: ``final_text`` is the text before it
        and the delta brings the stream up to exactly that.
        """
        if not self._stops:
            # Nothing is held back, so the delta is what the detokenizer adds: the serving front
            # pushes every token of every stream without stop strings through here.
            delta = self._detokenizer.push(token_ids)
            self._emitted += len(delta)
            return delta, False
        self._detokenizer.push(token_ids)
        text = self._detokenizer.text
        # Every stop string that could newly appear starts at or after what was emitted (the
        # holdback covers it), so searching from there finds it; the earliest one wins.
        starts = [text.find(stop, max(0, self._emitted - len(stop))) for stop in self._stops]
        found = [at for at in starts if at >= 0]
        if found:
            self.final_text = text[: min(found)]
            return self.finish(), True
        return self._emit_upto(len(text) - self._holdback), False

    def finish(self) -> str:
        """Ends the stream and returns what it still owes: the held-back tail of ``final_text``.

        Called for every finish (stop token, EOS, length, cancel); text held back as a possible
        stop-string prefix is real output once no further token can complete the stop string.
        """
        if self.final_text is None:
            self.final_text = self._detokenizer.text
        return self._emit_upto(len(self.final_text))

    @property
    def text(self) -> str:
        return self.final_text if self.final_text is not None else self._detokenizer.text

    def _emit_upto(self, end: int) -> str:
        if end <= self._emitted:
            return ""
        delta = self._detokenizer.text[self._emitted : end]
        self._emitted = end
        return delta
