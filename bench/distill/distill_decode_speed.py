"""Decode tokens/s of a model directory through the worker's own engine, as the worker serves it.

The engine is assembled by ``radixfair_engine.engine_builder.build_engine`` (the worker's start-up
path): Triton kernels, bf16 and CUDA graphs on a GPU; the torch backend in fp32 on a CPU. A quantized
directory (int8 / fp8, see radixfair_model_format.quantized_checkpoint) runs quantized. ``batch``
requests of random ``prompt_len``-token prompts are prefilled, then the decode steps that produce
``new_tokens`` tokens each are timed (greedy, end-of-sequence ignored, so every request decodes the
same number of tokens). Decode speed depends on the model's shape and format, not on its weights,
so a student is timed as soon as it is pruned, before it is trained.

``int8_kernel=True`` times an int8 checkpoint with its decode-sized projections (<= 256 rows) run
by the worker's Triton int8 kernel (kernels/int8_matmul.py: weight loaded as int8, dequantized in
registers) instead of QuantizedLinear's dequantize-then-matmul. The worker does not wire that kernel
in yet; the patch lives only inside this call (the class is restored on the way out), so the
figure says what wiring it would give. (The worker has wired the kernel since, under
``EngineConfig.quantized_triton_max_rows`` and its GEMV / tile settings, so the patch is no longer
what the worker runs; ``interleaved_decode_speeds`` never applies it.)

``interleaved_decode_speeds`` times several model directories on one machine in interleaved rounds
(bench/distill/distill_teacher_decode.py: the teacher in bf16, int8 and fp8), for a host whose speed
drifts between phases: every engine is built and warmed first, then each round runs every engine
at every batch size once, so a slow phase lands on every model alike.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from radixfair.gc_tuning import tune_for_serving
from radixfair_engine.config import EngineConfig, SchedulerConfig
from radixfair_engine.engine_builder import build_engine
from radixfair_engine.model.quantized_linear import QuantizedLinear
from radixfair_engine.request import FinishReason, Request, SamplingConfig


@dataclass(frozen=True)
class DecodeSpeedConfig:
    """Batch sizes timed, prompt and answer lengths (tokens), and the engine's device."""

    batches: tuple[int, ...] = (1, 128)
    prompt_len: int = 128
    new_tokens: int = 128
    device: str = "cuda"

    def engine_config(self) -> EngineConfig:
        cuda = self.device.startswith("cuda")
        largest = max(self.batches)
        pages_per_request = -(-(self.prompt_len + self.new_tokens + 1) // 16)
        return EngineConfig(
            page_size=16,
            num_pages=largest * pages_per_request + 64,
            max_running_requests=largest,
            max_batched_tokens=max(2048, largest * self.prompt_len),
            max_waiting_requests=largest,
            device=self.device,
            dtype="bfloat16" if cuda else "float32",
            backend="triton" if cuda else "torch",
            cuda_graph_max_batch=largest if cuda else 0,
            scheduler=SchedulerConfig(policy="fcfs"),
        )


def decode_speed(model_dir: Path, config: DecodeSpeedConfig, int8_kernel: bool = False) -> dict[str, float]:
    """``{"b1_tok_s": ..., "b1_ms_step": ..., "b128_tok_s": ...}`` for each batch size of ``config``."""
    out: dict[str, float] = {}
    stack = None
    calls: dict[str, int] = {}
    try:
        with triton_int8_projections(calls) if int8_kernel else nullcontext():
            stack = build_engine(config.engine_config(), model_dir)
            # The worker's engine process runs under these collector settings (engine_loop).
            tune_for_serving()
            for batch in config.batches:
                tok_s, ms = _timed_decode(stack.engine, batch, config, stack.model_config.vocab_size)
                out[f"b{batch}_tok_s"], out[f"b{batch}_ms_step"] = tok_s, ms
        if int8_kernel:
            # Python-side calls (graph capture and eager steps): whether every decode-sized
            # projection really went through the kernel, which a slower-than-expected figure asks.
            out["int8_kernel_calls"] = calls.get("kernel", 0)
            out["int8_fallback_calls"] = calls.get("fallback", 0)
    finally:
        del stack
        gc.collect()
        if config.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


def _timed_decode(
    engine, batch: int, config: DecodeSpeedConfig, vocab: int, tag: str = ""
) -> tuple[float, float]:
    """(decode tokens/s, ms per step) of one batch; ``tag`` keeps request ids apart across runs."""
    generator = torch.Generator().manual_seed(batch)
    high = max(vocab - 1, 11)
    sampling = SamplingConfig(max_tokens=config.new_tokens, temperature=0.0, ignore_eos=True)
    requests = [
        Request(
            f"speed{tag}-{batch}-{i}",
            "bench",
            torch.randint(10, high, (config.prompt_len,), generator=generator).tolist(),
            sampling,
        )
        for i in range(batch)
    ]
    for request in requests:
        engine.submit(request)
    # Prefill (and the first token) untimed: the rows below are decode steps only.
    while any(r.tokens_to_compute > 1 for r in requests) and engine.has_work():
        engine.step()
    _sync(config.device)
    already = sum(len(r.output_ids) for r in requests)
    steps = engine.steps
    started = time.perf_counter()
    while engine.has_work():
        engine.step()
    _sync(config.device)
    elapsed = time.perf_counter() - started
    # A request cut short (rejected, out of pages) would make the rate describe less work.
    short = [r.request_id for r in requests if r.finish_reason is not FinishReason.LENGTH]
    if short:
        raise RuntimeError(f"requests {short[:4]} did not decode their {config.new_tokens} tokens")
    decoded = sum(len(r.output_ids) for r in requests) - already
    return decoded / elapsed, 1e3 * elapsed / max(engine.steps - steps, 1)


@dataclass(frozen=True)
class DecodeRun:
    """One timed decode phase: decode tokens/s, and milliseconds per engine step."""

    tok_s: float
    ms_step: float


@dataclass(frozen=True)
class InterleavedSpeeds:
    """``runs[(name, batch)]``: the timed runs in round order. ``graph_ms[(name, batch)]``: device time of
    one decode step (median replay of the engine's captured graph; CUDA only). ``build_s[name]``: seconds
    to build the engine (load, Triton backend, graph capture)."""

    runs: dict[tuple[str, int], list[DecodeRun]] = field(default_factory=dict)
    graph_ms: dict[tuple[str, int], float | None] = field(default_factory=dict)
    build_s: dict[str, float] = field(default_factory=dict)


def interleaved_decode_speeds(
    model_dirs: Mapping[str, Path],
    config: DecodeSpeedConfig,
    rounds: int,
    log: Callable[[str], None] = print,
) -> InterleavedSpeeds:
    """Each of ``model_dirs`` (name -> directory) timed ``rounds`` times at every batch size, interleaved.

    Every engine is built by the worker's start-up path and warmed first (one untimed run at each
    batch size: Triton compiles, the allocator, first graph replays), then each round runs every
    engine at every batch once, in ``model_dirs``' order. All engines stay alive together (a
    SmolLM2-135M engine at batch 128 holds under 1 GB of KV cache).
    """
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    result = InterleavedSpeeds()
    stacks = {}
    try:
        for name, path in model_dirs.items():
            started = time.perf_counter()
            stacks[name] = build_engine(config.engine_config(), path)
            result.build_s[name] = time.perf_counter() - started
            for batch in config.batches:
                _timed_decode(
                    stacks[name].engine, batch, config, stacks[name].model_config.vocab_size, "-warm"
                )
            log(f"{name}: built in {result.build_s[name]:.1f} s and warmed")
        # The worker's engine process runs under these collector settings (engine_loop).
        tune_for_serving()
        for index in range(rounds):
            for name, stack in stacks.items():
                for batch in config.batches:
                    run = DecodeRun(
                        *_timed_decode(
                            stack.engine, batch, config, stack.model_config.vocab_size, f"-{index}"
                        )
                    )
                    result.runs.setdefault((name, batch), []).append(run)
                    log(f"round {index} {name} batch {batch}: {run.tok_s:,.0f} tok/s, {run.ms_step:.3f} ms")
        if config.device.startswith("cuda"):
            # Imported here: that script's module reads sys.argv for its own CPU mode at import.
            from bench.kernels.gpu_quantized_decode_bench import graph_step_ms

            for name, stack in stacks.items():
                for batch in config.batches:
                    result.graph_ms[name, batch] = graph_step_ms(stack.engine, batch)
    finally:
        stacks.clear()
        gc.collect()
        if config.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return result


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@contextmanager
def triton_int8_projections(calls: dict[str, int] | None = None, max_rows: int = 256) -> Iterator[None]:
    """Inside: int8 QuantizedLinear layers on a GPU multiply with kernels/int8_matmul.py up to ``max_rows``.

    Larger inputs (prefill chunks) keep the worker's own path. The CUDA graphs captured inside keep
    the kernel after the block ends, which is what the timing wants. ``calls`` counts the calls of
    each path ("kernel", and "fallback" for int8 inputs of <= ``max_rows`` rows that did not take it).
    """
    from radixfair_engine.kernels.int8_matmul import int8_weight_matmul

    original = QuantizedLinear.forward

    def forward(self: QuantizedLinear, x: torch.Tensor) -> torch.Tensor:
        if self.scheme != "int8" or not x.is_cuda or x.dim() != 2 or x.shape[0] > max_rows:
            if (
                calls is not None
                and self.scheme == "int8"
                and x.reshape(-1, x.shape[-1]).shape[0] <= max_rows
            ):
                calls["fallback"] = calls.get("fallback", 0) + 1
            return original(self, x)
        if calls is not None:
            calls["kernel"] = calls.get("kernel", 0) + 1
        return int8_weight_matmul(x.contiguous(), self.weight, self.weight_scale)

    QuantizedLinear.forward = forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        QuantizedLinear.forward = original  # type: ignore[method-assign]
