"""Greedy prefill + decode of a random-weight SmolLM2-135M with the torch and the Triton backend.

Used by gpu_kernel_check.py: the same weights, prompts and page layout run
through ``LlamaModel`` twice, once per backend, each with a fresh KV cache.
"""

from __future__ import annotations

import dataclasses

import torch

from radixfair_engine.model.backend import ForwardBatch, KernelBackend
from radixfair_engine.model.llama import KVCache, LlamaModel, rope_table
from radixfair_engine.model.torch_backend import TorchBackend
from radixfair_engine.model.triton_backend import TritonBackend
from radixfair_model_format.model_config import ModelConfig

SMOLLM2_135M = ModelConfig(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    tie_word_embeddings=True,
)
PAGE_SIZE = 16


def _batch(
    tokens: list[list[int]], starts: list[int], pages_per_seq: int, device: torch.device
) -> ForwardBatch:
    """Sequence b computes tokens[b] at positions starts[b]...; its pages are b*pages_per_seq + i."""
    ids, positions, slots, query_start, seq_lens = [], [], [], [0], []
    for b, (chunk, start) in enumerate(zip(tokens, starts)):
        ids += chunk
        span = range(start, start + len(chunk))
        positions += span
        slots += [(b * pages_per_seq + p // PAGE_SIZE) * PAGE_SIZE + p % PAGE_SIZE for p in span]
        query_start.append(query_start[-1] + len(chunk))
        seq_lens.append(start + len(chunk))
    table = torch.arange(len(tokens) * pages_per_seq, dtype=torch.int32).view(len(tokens), pages_per_seq)
    query_lens = [len(c) for c in tokens]
    return ForwardBatch(
        input_ids=torch.tensor(ids, device=device),
        positions=torch.tensor(positions, device=device),
        query_start_loc=torch.tensor(query_start, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        page_table=table.to(device),
        slot_mapping=torch.tensor(slots, device=device),
        logits_indices=torch.tensor([s - 1 for s in query_start[1:]], device=device),
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
        query_lens_host=query_lens,
        seq_lens_host=seq_lens,
    )


def _run(
    model: LlamaModel,
    backend: KernelBackend,
    prompts: list[list[int]],
    steps: int,
    dtype: torch.dtype,
    forced: list[list[int]] | None = None,
) -> tuple[list[list[int]], torch.Tensor]:
    """Each step's argmax per sequence, and the prefill logits.

    With ``forced`` (a token list per step), those tokens are fed instead of the model's own
    choice (teacher forcing), so one near-tie flip does not change every later comparison.
    """
    device = next(model.parameters()).device
    model.backend = backend
    pages_per_seq = -(-(max(map(len, prompts)) + steps) // PAGE_SIZE)
    cache = KVCache(model.config, len(prompts) * pages_per_seq, PAGE_SIZE, dtype, device)
    logits = model(_batch(prompts, [0] * len(prompts), pages_per_seq, device), cache)
    first_logits = logits.clone()
    chosen: list[list[int]] = []
    lengths = [len(p) for p in prompts]
    for step in range(steps):
        chosen.append(logits.argmax(dim=-1).tolist())
        next_ids = chosen[-1] if forced is None else forced[step]
        logits = model(_batch([[t] for t in next_ids], lengths, pages_per_seq, device), cache)
        lengths = [n + 1 for n in lengths]
    return chosen, first_logits


@dataclasses.dataclass(frozen=True)
class Agreement:
    """Share of teacher-forced decode steps whose argmax equals the fp32 torch backend's token."""

    backend: str
    dtype: str
    agreement: float
    prefill_logits_error: float  # relative to the fp32 torch backend's prefill logits


def argmax_agreement(steps: int, layers: int = 30, seed: int = 0) -> list[Agreement]:
    """The fp32 torch backend decodes greedily; every other (backend, dtype) is fed its tokens.

    Rows: Triton fp32 (must agree everywhere), torch bf16 (the yardstick: what bf16 alone
    costs) and Triton bf16 (should cost no more than torch bf16). Same weights for all.
    """
    torch.manual_seed(seed)
    config = dataclasses.replace(SMOLLM2_135M, num_hidden_layers=layers)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = LlamaModel(config, TorchBackend()).to(device=device, dtype=torch.float32).eval()
    # A wider initialisation than training's 0.02 (as bench/engine/gpu_engine_bench.py uses) makes the
    # next-token logits peaked, so the comparison tests arithmetic rather than near-ties.
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.08)
    model.cos_sin = rope_table(config).to(device)
    generator = torch.Generator().manual_seed(seed + 1)
    lengths = (5, 17, 64, 128, 1, 33, 200, 16)
    prompts = [torch.randint(0, config.vocab_size, (n,), generator=generator).tolist() for n in lengths]
    reference, reference_logits = _run(model, TorchBackend(), prompts, steps, torch.float32)
    rows = []
    for backend, dtype in (
        (TritonBackend(), torch.float32),
        (TorchBackend(), torch.bfloat16),
        (TritonBackend(), torch.bfloat16),
    ):
        model = model.to(dtype=dtype)
        model.cos_sin = rope_table(config).to(device)  # RoPE angles stay fp32, as the loader keeps them
        chosen, logits = _run(model, backend, prompts, steps, dtype, forced=reference)
        pairs = [(a, b) for row_a, row_b in zip(reference, chosen) for a, b in zip(row_a, row_b)]
        error = (
            (logits.double() - reference_logits.double()).norm() / reference_logits.double().norm()
        ).item()
        rows.append(
            Agreement(
                backend.name,
                str(dtype).removeprefix("torch."),
                sum(a == b for a, b in pairs) / len(pairs),
                error,
            )
        )
    return rows
