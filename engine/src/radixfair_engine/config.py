"""Engine configuration: frozen dataclasses built once at start-up and passed down.

The worker's own settings (ports, TLS, router, metrics) are ``radixfair_worker.config.WorkerConfig``,
which holds an ``EngineConfig`` as its ``engine`` section."""

from __future__ import annotations

from dataclasses import dataclass, field

from radixfair_engine.scheduler.deficit_ledger import IDLE_RULES


@dataclass(frozen=True)
class SchedulerConfig:
    """Which local policy orders the waiting queue, and its parameters; checks its own values.

    One flat section for every policy, so a deployment switches policies by name alone; each
    field's comment says which policies read it. The name is checked by
    ``scheduler.registry.build_policy``, which reads the registry (the policies import this
    module, so it cannot import them).
    """

    # A name in scheduler/registry.py (build_policy refuses another, listing the names).
    policy: str = "dlpm"
    # DLPM quantum Q, in weighted tokens of service.
    quantum: float = 1024.0
    # Service weights: input tokens computed, and output tokens generated.
    input_token_weight: float = 1.0
    output_token_weight: float = 2.0
    # Fraction of w_in charged for a prompt token served from cache (paper: 0).
    cached_token_weight: float = 0.0
    # lpm_aging: priority gained per second of waiting, in prefix-match tokens.
    lpm_aging_rate: float = 100.0
    # dlpm: what a client that was idle starts with when it is backlogged again
    # (scheduler.deficit_ledger): "lift" (VTC's lift in deficit terms: the refills
    # it missed, but no more credit than the most underserved active client),
    # "cap" (its debt, capped at Q) or "reset" (Q, debt forgiven). Each keeps the
    # bound between continuously backlogged clients.
    idle_deficit: str = "lift"
    # dlpm: a waiting request passed over this many times by requests of its own
    # client goes before them (the per-request wait bound in scheduler.dlpm).
    max_overtakes: int = 8
    # dlpm: rule 7 (scheduler.dlpm), off by default: a returning client with credit, passed by
    # max_client_passes admissions of other clients' requests, has a request admitted before the
    # prefix-match order (0 is VTC's order for a returning client's first request); a turn refused for
    # room drains one other client, not the batch. Off because, gated, it still costs 1.6% / 3.4% of
    # DLPM's throughput on shared_prefix and 1.7% / 3.9% on heavy_client (median / worst seed,
    # bench/results/eval_returning_turns_*.md) against a 2% line for both.
    returning_turns: bool = False
    max_client_passes: int = 0
    # dlpm, rule 7's gate (opt-in, bench/results/eval_returning_turns_*.md): a client returns (becomes
    # backlogged) with a turn only if its VTC counter, lifted as VTC lifts it, is below the mean of
    # the backlogged clients'. False is the earlier form: a turn for every client back from idle.
    turns_only_when_behind: bool = False
    # lpm, lpm_aging, dlpm: a waiting request waits while a request already admitted (or still
    # prefilling) will compute at least this many pages of its prefix that the cache lacks, and then
    # matches them instead of computing them again (scheduler.in_batch_prefix); 0 disables. 2 pages
    # (32 tokens at page_size 16, SGLang's in-batch threshold): one page is about a chat template's
    # header, which unrelated requests share, and holding on it would serialise them a step apart.
    in_batch_prefix_pages: int = 2

    def __post_init__(self) -> None:
        if self.input_token_weight < 0 or self.output_token_weight < 0:
            raise ValueError("input_token_weight and output_token_weight must be >= 0")
        if not 0.0 <= self.cached_token_weight <= 1.0:
            raise ValueError("cached_token_weight is a fraction of input_token_weight: 0 <= it <= 1")
        if self.quantum <= 0:
            raise ValueError("quantum must be > 0")
        if self.lpm_aging_rate < 0:
            raise ValueError("lpm_aging_rate must be >= 0")
        if self.idle_deficit not in IDLE_RULES:
            raise ValueError(
                f"idle_deficit must be one of {', '.join(IDLE_RULES)}, got {self.idle_deficit!r}"
            )
        if self.max_overtakes < 0:
            raise ValueError("max_overtakes must be >= 0")
        if self.max_client_passes < 0:
            raise ValueError("max_client_passes must be >= 0")
        if self.in_batch_prefix_pages < 0:
            raise ValueError("in_batch_prefix_pages must be >= 0 (0 disables in-batch prefix holding)")


@dataclass(frozen=True)
class PrefillBatchingConfig:
    """When new requests are held back from a decode-only step (see ``prefill_batching``).

    A decode-only step replays a CUDA graph; a step with a prefill runs eagerly, several times
    slower on a small model. Holding arrivals back a few steps lets one eager step prefill them
    together.
    """

    # true, false, or "auto": on where decode steps replay CUDA graphs (cuda with
    # cuda_graph_max_batch > 0), off elsewhere (on the CPU every step is eager alike).
    enabled: bool | str = "auto"
    # A waiting request is held back for at most this many steps; 0 never holds back.
    max_wait_steps: int = 8
    # The hold also ends once the waiting requests number at least this fraction of the decoding
    # ones (rounded up, so a small batch admits its first arrival at once).
    waiting_ratio: float = 0.125

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool) and self.enabled != "auto":
            raise ValueError(
                f"engine.prefill_batching.enabled must be true, false or 'auto', got {self.enabled!r}"
            )
        if self.max_wait_steps < 0:
            raise ValueError("engine.prefill_batching.max_wait_steps must be 0 (never hold) or positive")
        if not 0 < self.waiting_ratio <= 1:
            raise ValueError("engine.prefill_batching.waiting_ratio must be in (0, 1]")


@dataclass(frozen=True)
class EngineConfig:
    """Batching and memory limits of the engine loop."""

    # Tokens per KV page; the radix cache shares whole pages only.
    page_size: int = 16
    # KV pages in the pool; with page_size this bounds cached + running tokens.
    num_pages: int = 2048
    # Most requests in the running batch.
    max_running_requests: int = 64
    # Most tokens one forward step computes (decode tokens + prefill chunks).
    # A longer prompt is prefilled in chunks of at most this many tokens.
    max_batched_tokens: int = 512
    # Waiting requests beyond this are refused with RESOURCE_EXHAUSTED.
    max_waiting_requests: int = 256
    # Largest prompt + max_tokens accepted; 0 means the model's context length.
    max_context_tokens: int = 0
    # torch device and dtype of weights and KV cache.
    device: str = "cpu"
    dtype: str = "float32"
    # Kernel backend: "torch" (reference, runs anywhere) or "triton" (GPU).
    backend: str = "torch"
    # Triton backend, quantized (int8/fp8) checkpoints: products of up to this many rows run the
    # weight-only Triton kernel, larger ones dequantize for cuBLAS; 0 dequantizes always
    # (model/quantized_linear.QuantizedKernelConfig says where 128 comes from).
    quantized_triton_max_rows: int = 128
    # Of those, products of up to this many rows take the kernel's GEMV form, the rest its tile
    # form; 0 keeps the tile form (QuantizedKernelConfig.gemv_max_rows says why).
    quantized_gemv_max_rows: int = 4
    # The tile form's largest row tile above 16 rows: 16, 32, 64 (the tiles before #15's second
    # pass) or 128 (kernels/int8_matmul.tile_sizes says why 32).
    quantized_tile_max_block_m: int = 32
    # On CUDA, replay decode steps of up to this many requests as captured
    # graphs; 0 disables graphs.
    cuda_graph_max_batch: int = 128
    # Overlap the host's per-step work (scheduling, staging, bookkeeping, detokenizing) with
    # the device's forward pass by running the bookkeeping one step behind: true, false, or
    # "auto" (on for cuda, off elsewhere: on the CPU nothing runs concurrently to hide).
    overlap_schedule: bool | str = "auto"
    # Decode attention reads a prefix shared by a group of running sequences (the same leading
    # pages) once per group instead of once per sequence (kernels.cascade_decode_attention), where
    # a group saves enough reads to pay (kernels.prefix_groups); Triton backend only.
    cascade_decode: bool = True
    # K/V token reads per layer a group must save before its batch takes the cascade kernel
    # (kernels.prefix_groups.PrefixSharingConfig.min_saved_tokens, where the measurement behind the
    # default is).
    cascade_min_saved_tokens: int = 262_144
    # Holding new requests back from decode-only steps so their prefills run together.
    prefill_batching: PrefillBatchingConfig = field(default_factory=PrefillBatchingConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    # The engine process exits after this many steps in a row fail for the whole batch (a failure
    # no single request reproduces), so the worker reports NOT_SERVING instead of failing every
    # request while it looks healthy; 0 never exits.
    max_failed_steps_in_a_row: int = 5

    def __post_init__(self) -> None:
        if self.max_failed_steps_in_a_row < 0:
            raise ValueError("engine.max_failed_steps_in_a_row must be 0 (never exit) or positive")
        if self.cascade_min_saved_tokens < 0:
            raise ValueError("engine.cascade_min_saved_tokens must be 0 or more")
        if self.quantized_triton_max_rows < 0:
            raise ValueError("engine.quantized_triton_max_rows must be 0 (always dequantize) or positive")
        if self.quantized_gemv_max_rows < 0:
            raise ValueError("engine.quantized_gemv_max_rows must be 0 (tile kernel only) or positive")
        if self.quantized_tile_max_block_m not in (16, 32, 64, 128):
            raise ValueError("engine.quantized_tile_max_block_m must be 16, 32, 64 or 128")
        for name in ("page_size", "num_pages", "max_running_requests", "max_batched_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"engine.{name} must be positive")
        if self.max_running_requests > self.max_batched_tokens:
            # Every running request decodes one token per step inside the token budget.
            raise ValueError("engine.max_running_requests must not exceed engine.max_batched_tokens")
        if not isinstance(self.overlap_schedule, bool) and self.overlap_schedule != "auto":
            raise ValueError(
                f"engine.overlap_schedule must be true, false or 'auto', got {self.overlap_schedule!r}"
            )

    @property
    def decode_graph_rows(self) -> int:
        """The most decode rows a step replays as a captured CUDA graph; 0 without graphs."""
        if not self.device.startswith("cuda") or self.cuda_graph_max_batch <= 0:
            return 0
        return min(self.cuda_graph_max_batch, self.max_running_requests)

    @property
    def overlap_enabled(self) -> bool:
        """Whether the engine runs its bookkeeping one step behind the device."""
        if self.overlap_schedule == "auto":
            return self.device.startswith("cuda")
        return bool(self.overlap_schedule)
