"""Picks each request's next token from its logits row, batched on the logits' device.

Greedy rows take the argmax. Sampled rows (temperature > 0, optional top-k
and top-p) draw by inverse CDF with one uniform number per row, and that
number is a stateless hash of (the request's seed, the index of the token
being drawn): no generator state is shared between rows or carried between
steps. A request's i-th sampled token therefore depends only on its seed, i
and its logits row, whatever else shares the batch, and nothing in
``sample`` waits for the device (the engine keeps overlap scheduling on for
sampled traffic too).

Every row's probabilities are the softmax of its own (top-k masked) scores in
vocabulary order, whether or not other rows filter, and top-k and top-p select
without sorting the vocabulary (``nucleus``).

A row that cannot be sampled fails its request alone, greedy or sampled. What
the host can see (a temperature that is not > 0) is reported at once in
``SampledRows.failures``; what only the device can see (a logits row with no
finite maximum: NaN or inf logits) is reported as the id FAILED_TOKEN in the
ids the host reads, while the ids kept on the device (the next step's
inputs under overlap) stay valid vocabulary ids.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import torch

from radixfair_engine.nucleus import keep_top_k, top_p_keep
from radixfair_engine.request import Request, SamplingConfig

# The id the host reads for a row whose logits had no finite maximum (never a vocabulary id).
FAILED_TOKEN = -2
FAILED_ROW_MESSAGE = "sampling failed: logits row has no finite maximum (NaN or infinite logits)"

_MASK32 = 0xFFFFFFFF
_FLOAT32_TINY = float(torch.finfo(torch.float32).smallest_normal) * 2.0**-23  # the least denormal
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)
# Columns of the per-row parameter table uploaded once per sampled step (float64 holds each exactly).
_SEED_LO, _SEED_HI, _INDEX, _TEMPERATURE, _TOP_K, _TOP_P = range(6)


class SamplingError(Exception):
    """One row could not be sampled; only its request fails."""


@dataclass
class SampledRows:
    """One step's sampled ids, still on the device, and the rows already known to have failed.

    ``device`` [S] int64: valid vocabulary ids on the logits' device (a failed row holds some id,
    so that a next step reading it as input stays in range). ``host`` [S] int64, same device:
    what the host should read; equal to ``device`` except FAILED_TOKEN where the device found a
    row it could not sample. ``failures``: row -> message for rows failed before any device work
    (their ids are meaningless).
    """

    device: torch.Tensor
    host: torch.Tensor
    failures: dict[int, str] = field(default_factory=dict)

    @property
    def tokens(self) -> list[int]:
        """The host's ids as a list; waits for the device (for synchronous callers, not the engine)."""
        return self.host.tolist()


class Sampler:
    """Greedy, temperature, top-k and top-p sampling, batched on the device, seeded per request.

    A request without a seed gets a random 64-bit seed the first time one of its tokens is
    sampled; ``forget`` drops it when the request finishes.
    """

    def __init__(self) -> None:
        self._random_seeds: dict[str, int] = {}

    def sample(
        self,
        logits: torch.Tensor,
        request_ids: list[str],
        configs: list[SamplingConfig],
        indices: list[int] | None = None,
    ) -> SampledRows:
        """logits [S, vocab] fp32 on any device -> SampledRows; never waits for the device.

        ``indices[r]``: which of its request's generated tokens row r draws (0 for the first);
        with the request's seed it alone decides the row's random number. None: all 0.
        """
        greedy_ids = logits.argmax(dim=-1)
        if all(config.greedy for config in configs):
            return greedy_rows(logits, greedy_ids)
        failures: dict[int, str] = {}
        params = []
        indices = indices if indices is not None else [0] * len(configs)
        for row, (request_id, config, index) in enumerate(zip(request_ids, configs, indices)):
            temperature = config.temperature
            if config.greedy:
                params.append((0, 0, 0, 0.0, 0, 1.0))
                continue
            if not temperature > 0:  # NaN or negative: an engine caller bypassing the edge's checks
                failures[row] = f"sampling failed: temperature must be > 0 to sample, got {temperature}"
                params.append((0, 0, 0, 0.0, 0, 1.0))
                continue
            seed = config.seed if config.seed is not None else self._random_seed(request_id)
            seed &= (1 << 64) - 1
            top_k = config.top_k if 0 < config.top_k < logits.shape[-1] else 0
            # The device divides in float32: keep a temperature representable there and > 0.
            temperature = min(max(temperature, _FLOAT32_TINY), _FLOAT32_MAX)
            top_p = config.top_p if config.top_p < 1.0 else 1.0  # NaN (an engine caller's) keeps all
            params.append((seed & _MASK32, seed >> 32, index, temperature, top_k, top_p))
        table = _upload(torch.tensor(params, dtype=torch.float64), logits.device)
        largest_k = max(p[_TOP_K] for p in params)
        any_top_p = any(p[_TOP_P] < 1.0 for p in params)
        sampled, bad = sample_rows(logits, table, largest_k, any_top_p)
        greedy = table[:, _TEMPERATURE] == 0
        device = torch.where(greedy, greedy_ids, sampled)
        host = torch.where(bad, FAILED_TOKEN, device)  # greedy rows too (argmax returns a NaN's index)
        return SampledRows(device, host, failures)

    def sample_requests(self, logits: torch.Tensor, requests: list[Request]) -> SampledRows:
        """``sample`` for one engine step: row r draws token len(output_ids) of ``requests[r]``.

        An all-greedy step (the common case) costs one pass over the requests and one argmax.
        """
        for request in requests:
            if request.sampling.temperature != 0.0:
                break
        else:
            return greedy_rows(logits, logits.argmax(dim=-1))
        return self.sample(
            logits,
            [r.request_id for r in requests],
            [r.sampling for r in requests],
            [len(r.output_ids) for r in requests],
        )

    def forget(self, request_id: str) -> None:
        self._random_seeds.pop(request_id, None)

    def _random_seed(self, request_id: str) -> int:
        seed = self._random_seeds.get(request_id)
        if seed is None:
            seed = self._random_seeds[request_id] = secrets.randbits(64)
        return seed


def greedy_rows(logits: torch.Tensor, ids: torch.Tensor) -> SampledRows:
    """logits [S, V] fp32 and their argmax ids [S] -> SampledRows failing the rows with no finite maximum.

    argmax treats NaN as the largest value, so a row's value at its argmax is finite exactly when
    the row has a finite maximum (no NaN, no +inf, not all -inf): one gather, not another pass.
    """
    best = logits.gather(-1, ids[:, None]).squeeze(-1)
    return SampledRows(ids, torch.where(torch.isfinite(best), ids, FAILED_TOKEN))


def sample_rows(
    logits: torch.Tensor, table: torch.Tensor, largest_k: int, any_top_p: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws one id per row from the tempered, top-k/top-p filtered distribution.

    logits [S, V] fp32; table [S, 6] float64 per-row (seed_lo, seed_hi, index, temperature, top_k,
    top_p), temperature 0 on rows whose result is not used, top_k in 0..V-1 (0: none), top_p
    finite. ``largest_k``: the largest top_k (0 skips top-k); ``any_top_p``: some row's top_p is
    < 1 (else top-p is skipped); both are known to the host, so nothing here waits for the device.
    Returns (ids [S] int64, bad [S] bool: the row's logits have no finite maximum, its id is
    arbitrary but in range).

    Every row's probabilities are the softmax of its own scores in vocabulary order: a row that
    neither row filter touches draws exactly what it draws in a batch where nothing filters.
    """
    logits = logits.float()  # a no-op for fp32; top-p reads the scores' float32 bits
    temperature = table[:, _TEMPERATURE].to(torch.float32)
    temperature = torch.where(temperature > 0, temperature, torch.ones_like(temperature))
    best = logits.amax(dim=-1, keepdim=True)  # NaN anywhere in the row propagates here
    bad = ~torch.isfinite(best.squeeze(-1))
    # Shifting by the maximum first keeps every tempered score <= 0 with the best exactly 0, so a
    # vanishing temperature gives the argmax (never inf - inf = NaN) and a huge one gives uniform.
    scores = (logits - torch.where(torch.isfinite(best), best, torch.zeros_like(best))) / temperature[:, None]
    scores = torch.where(bad[:, None], torch.zeros_like(scores), scores)  # a bad row's id is discarded
    uniform = row_uniforms(table)
    if largest_k > 0:
        scores = keep_top_k(scores, table[:, _TOP_K].to(torch.int64), largest_k)
    probs = torch.softmax(scores, dim=-1)
    if any_top_p:
        probs = probs.masked_fill(~top_p_keep(scores, probs, table[:, _TOP_P]), 0.0)
    return inverse_cdf(probs, uniform), bad


def inverse_cdf(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """probs [S, V] >= 0, not necessarily normalised, each row with some mass; uniform [S] float64
    in (0, 1) -> [S] int64: the first column whose cumulative mass reaches uniform * row mass.

    That column always has mass > 0: the target is > 0 and <= the row's total, and the first
    column reaching it is where the cumulative sum rises. Summed in float64 so that a token's
    share is not lost below the running sum's rounding (float32 would drop ~1e-7 per token).
    """
    cdf = probs.to(torch.float64).cumsum(dim=-1)
    target = uniform[:, None] * cdf[:, -1:]
    return (cdf < target).sum(dim=-1).clamp(max=probs.shape[-1] - 1)


def row_uniforms(table: torch.Tensor) -> torch.Tensor:
    """table [S, 6] (see sample_rows) -> [S] float64 in (0, 1), a hash of (seed, index) per row.

    Counter-based: the same (seed, index) gives the same number on any batch and step.
    """
    seed_lo = table[:, _SEED_LO].to(torch.int64)
    seed_hi = table[:, _SEED_HI].to(torch.int64)
    index = table[:, _INDEX].to(torch.int64)
    h = mix32(seed_lo ^ 0x9E3779B9)
    h = mix32(h ^ seed_hi)
    h = mix32(h ^ (index & _MASK32))
    h = mix32(h ^ 0x85EBCA6B)
    return (h.to(torch.float64) + 0.5) / 2.0**32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """int64 tensor of values in [0, 2**32) -> a well-mixed 32-bit hash of each, same range.

    A xor-shift-multiply finaliser. Every product stays below 2**63 (the multiplier is split into
    16-bit halves), so no int64 arithmetic overflows and CPU and GPU agree bit for bit.
    """
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x * constant) mod 2**32 for x in [0, 2**32), without int64 overflow."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & _MASK32


def _upload(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor to ``device`` without waiting for the device (a pinned, non-blocking copy)."""
    if device.type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)


def tempered_probs(scores: torch.Tensor, temperature: float, top_k: int) -> torch.Tensor:
    """scores [vocab] fp32 -> softmax(scores / temperature) over the top_k best, never NaN.

    The one-row reference of what ``sample_rows`` computes in a batch (tests compare the two).
    Dividing raw logits by a tiny temperature overflows to inf and softmax(inf) is NaN. Shifting
    by the maximum first keeps every tempered score <= 0 with the best exactly 0, so the largest
    exponent is 1 and the sum is >= 1 for any temperature > 0: a vanishing temperature becomes
    the argmax (shared evenly among exact ties), a huge one becomes uniform.
    """
    if not temperature > 0:
        raise SamplingError(f"temperature must be > 0 to sample, got {temperature}")
    best = scores.max()
    if not torch.isfinite(best):
        raise SamplingError(f"logits row has no finite maximum ({best.item()})")
    if torch.isnan(scores).any():
        raise SamplingError("logits row contains NaN")
    scores = (scores - best) / temperature
    if 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    return torch.softmax(scores, dim=-1)
