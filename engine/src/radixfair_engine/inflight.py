"""A launched engine step whose sampled tokens the host has not read yet (overlap scheduling).

With overlap on, ``Engine.step`` launches step n's forward and sampling, starts
copying the sampled ids to pinned host memory, and only then reads step
n-1's ids, so the host's bookkeeping for n-1 and its scheduling of n+1 run
while the device computes n. These classes hold what is needed to finish a
launched step later.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from radixfair_engine.model_runner import CarriedTokens, ScheduledChunk


class SampledTokens:
    """One step's sampled ids on their way to the host.

    ``device`` is [S] int64 on the model's device (what the next step gathers
    its inputs from), or None when the ids were sampled on the host.
    """

    def __init__(
        self,
        device: torch.Tensor | None,
        host: torch.Tensor | list[int],
        ready: torch.cuda.Event | None = None,
    ) -> None:
        self.device = device
        self._host = host
        self._ready = ready

    @classmethod
    def known(cls, tokens: list[int]) -> SampledTokens:
        """Ids the host already has (a step sampled synchronously)."""
        return cls(None, tokens)

    @classmethod
    def copy_to_host(cls, tokens: torch.Tensor, reported: torch.Tensor | None = None) -> SampledTokens:
        """Starts a non-blocking copy of ids [S] into pinned memory; ``wait`` finishes it.

        ``tokens`` stay on the device as the next step's inputs; ``reported`` (same shape and
        device, default ``tokens``) is what the host reads: the sampler marks rows it could not
        sample there, while ``tokens`` keeps valid ids for them.
        """
        reported = tokens if reported is None else reported
        if tokens.device.type != "cuda":
            return cls(tokens, reported)
        if tokens.numel() == 0:  # a step of prefill chunks only: nothing to wait for
            return cls(tokens, [])
        host = torch.empty(reported.shape, dtype=reported.dtype, pin_memory=True)
        host.copy_(reported, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return cls(tokens, host, ready)

    def wait(self) -> list[int]:
        """The ids; blocks until the step that sampled them has finished on the device."""
        if self._ready is not None:
            self._ready.synchronize()
            self._ready = None
        if isinstance(self._host, torch.Tensor):
            self._host = self._host.tolist()
        return self._host


@dataclass
class InFlightStep:
    """A launched step: its chunks, the chunks that sample a token (in logits-row order) and the ids."""

    chunks: list[ScheduledChunk]
    sampled: list[ScheduledChunk]
    tokens: SampledTokens

    def carry_for(self, chunks: list[ScheduledChunk]) -> CarriedTokens | None:
        """Where the next step's placeholder inputs come from: rows of this step's sampled ids.

        A chunk carries when its request's newest token is still a placeholder; it is then this
        step's token for that request, and the chunk's last input id.
        """
        if self.tokens.device is None:
            return None
        sampled, count = self.sampled, len(self.sampled)
        rows: list[int] = []
        row_of: dict[int, int] | None = None
        carries = False
        for index, chunk in enumerate(chunks):
            request = chunk.request
            if not request.pending_tokens:
                rows.append(-1)
                continue
            carries = True
            # Decode rows keep their places from step to step (decode_rows), so a request is
            # usually in the same row of the step before: looked up only where it is not.
            if index < count and sampled[index].request is request:
                rows.append(index)
                continue
            if row_of is None:
                row_of = {id(c.request): row for row, c in enumerate(sampled)}
            rows.append(row_of[id(request)])
        return CarriedTokens(self.tokens.device, tuple(rows)) if carries else None
