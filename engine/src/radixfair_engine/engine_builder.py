"""Assembles an Engine from a config and a model directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from radixfair.tokenization import PromptEncoder
from radixfair_engine.config import EngineConfig
from radixfair_engine.engine import Engine
from radixfair_engine.kernels.prefix_groups import PrefixSharingConfig
from radixfair_engine.model.backend import KernelBackend
from radixfair_engine.model.llama import KVCache
from radixfair_engine.model.loader import load_model
from radixfair_engine.model.quantized_linear import QuantizedKernelConfig
from radixfair_engine.model.torch_backend import TorchBackend
from radixfair_engine.model_runner import ModelRunner
from radixfair_engine.scheduler.registry import build_policy
from radixfair_model_format.model_config import ModelConfig


@dataclass
class ServingStack:
    """An engine and the tokenizer of the model it serves."""

    engine: Engine
    encoder: PromptEncoder
    model_config: ModelConfig
    model_dir: Path


def build_backend(name: str, quantized: QuantizedKernelConfig | None = None) -> KernelBackend:
    if name == "torch":
        return TorchBackend()
    if name == "triton":
        from radixfair_engine.model.triton_backend import TritonBackend

        return TritonBackend(quantized=quantized)
    raise ValueError(f"unknown kernel backend {name!r}; use 'torch' or 'triton'")


def build_engine(config: EngineConfig, model_dir: Path, encoder: PromptEncoder | None = None) -> ServingStack:
    """The engine for ``model_dir`` under ``config``. ``encoder``: the model's PromptEncoder when the
    caller already holds one (reading tokenizer.json costs ~0.2 s of CPU); else it is read here."""
    dtype = getattr(torch, config.dtype)
    quantized = QuantizedKernelConfig(
        triton_max_rows=config.quantized_triton_max_rows,
        gemv_max_rows=config.quantized_gemv_max_rows,
        tile_max_block_m=config.quantized_tile_max_block_m,
    )
    model = load_model(model_dir, build_backend(config.backend, quantized), dtype, config.device)
    model_config = model.config
    device = torch.device(config.device)
    use_graphs = device.type == "cuda" and config.decode_graph_rows > 0
    # One page beyond the allocator's: padded graph rows write their K/V there.
    kv_pages = config.num_pages + (1 if use_graphs else 0)
    kv_cache = KVCache(model_config, kv_pages, config.page_size, dtype, device)
    encoder = encoder or PromptEncoder(model_dir)
    eos = {t for t in (model_config.eos_token_id, encoder.eos_token_id) if t is not None}
    max_context = min(
        config.max_context_tokens or model_config.max_position_embeddings,
        model_config.max_position_embeddings,
    )
    sharing = PrefixSharingConfig(
        enabled=config.cascade_decode, min_saved_tokens=config.cascade_min_saved_tokens
    )
    graphs = None
    if use_graphs:
        from radixfair_engine.cuda_graph_runner import DecodeGraphRunner, capture_sizes

        graphs = DecodeGraphRunner(
            model,
            kv_cache,
            scratch_page=config.num_pages,
            max_pages_per_seq=-(-max_context // config.page_size),
            batch_sizes=capture_sizes(config.decode_graph_rows),
            prefix_sharing=sharing,
        )
    engine = Engine(
        config,
        ModelRunner(model, kv_cache, config.num_pages, graphs, sharing),
        build_policy(config.scheduler),
        eos_token_ids=frozenset(eos),
        max_context_tokens=max_context,
        detokenizer_factory=encoder.new_detokenizer,
    )
    return ServingStack(engine=engine, encoder=encoder, model_config=model_config, model_dir=model_dir)
