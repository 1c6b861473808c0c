"""The peer a careful engineer writes without custom kernels: a Llama decoder in plain torch ops
with a static KV cache and SDPA, its decode step captured in one CUDA graph.

Every sequence of the batch has the same prompt length, so one position
tensor serves the whole batch and every shape is static.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from radixfair_model_format.model_config import ModelConfig


class PlainDecoder:
    def __init__(self, config: ModelConfig, model_dir: Path, max_batch: int, max_len: int = 512) -> None:
        self.config = config
        self.max_len = max_len
        state = load_file(str(model_dir / "model.safetensors"), device="cuda")
        w = {k.removeprefix("model."): v.to(torch.bfloat16) for k, v in state.items()}
        self.embed = w["embed_tokens.weight"]
        self.layers = []
        for i in range(config.num_hidden_layers):
            p = f"layers.{i}."
            self.layers.append(
                {
                    "ln1": w[p + "input_layernorm.weight"],
                    "qkv": torch.cat([w[p + f"self_attn.{n}_proj.weight"] for n in "qkv"]),
                    "o": w[p + "self_attn.o_proj.weight"],
                    "ln2": w[p + "post_attention_layernorm.weight"],
                    "gate_up": torch.cat([w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"]]),
                    "down": w[p + "mlp.down_proj.weight"],
                }
            )
        self.norm = w["norm.weight"]
        d = config.head_dim
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, device="cuda").float() / d))
        freqs = torch.outer(torch.arange(max_len, device="cuda").float(), inv_freq)
        self.cos = torch.cat([freqs.cos(), freqs.cos()], -1).to(torch.bfloat16)
        self.sin = torch.cat([freqs.sin(), freqs.sin()], -1).to(torch.bfloat16)
        shape = (config.num_hidden_layers, max_batch, config.num_key_value_heads, max_len, d)
        self.k = torch.zeros(shape, dtype=torch.bfloat16, device="cuda")
        self.v = torch.zeros(shape, dtype=torch.bfloat16, device="cuda")

    def _norm(self, x, weight):
        x32 = x.float()
        return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.config.rms_norm_eps)).to(
            x.dtype
        )

    def _rope(self, x, positions):  # x [B, H, L, D], positions [L]
        cos, sin = self.cos[positions], self.sin[positions]
        x1, x2 = x.chunk(2, -1)
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids [B, L] at ``positions`` [L]; mask [L, max_len] bool. Returns logits of the last position."""
        c = self.config
        b, length = ids.shape
        h, kvh, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        x = F.embedding(ids, self.embed)
        for index, layer in enumerate(self.layers):
            y = self._norm(x, layer["ln1"])
            q, k, v = (y @ layer["qkv"].T).split([h * d, kvh * d, kvh * d], -1)
            q = self._rope(q.view(b, length, h, d).transpose(1, 2), positions)
            k = self._rope(k.view(b, length, kvh, d).transpose(1, 2), positions)
            self.k[index, :b].index_copy_(2, positions, k)
            self.v[index, :b].index_copy_(2, positions, v.view(b, length, kvh, d).transpose(1, 2))
            attn = F.scaled_dot_product_attention(
                q, self.k[index, :b], self.v[index, :b], attn_mask=mask, enable_gqa=True
            )
            x = x + attn.transpose(1, 2).reshape(b, length, h * d) @ layer["o"].T
            gate, up = (self._norm(x, layer["ln2"]) @ layer["gate_up"].T).chunk(2, -1)
            x = x + (F.silu(gate) * up) @ layer["down"].T
        return self._norm(x[:, -1], self.norm) @ self.embed.T

    @torch.inference_mode()
    def throughput(self, batch: int, prompt_len: int, new_tokens: int) -> dict[str, float]:
        ids = torch.randint(100, 49000, (batch, prompt_len), device="cuda")
        cols = torch.arange(self.max_len, device="cuda")
        positions = torch.arange(prompt_len, device="cuda")
        logits = self.forward(ids, positions, cols[None, :] <= positions[:, None])
        token = logits.argmax(-1, keepdim=True)
        position = torch.tensor([prompt_len], device="cuda")

        def step():
            out = self.forward(token, position, (cols <= position)[None, :])
            token.copy_(out.argmax(-1, keepdim=True))
            position.add_(1)

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            step()
        torch.cuda.current_stream().wait_stream(stream)
        position.fill_(prompt_len)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        position.fill_(prompt_len)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(new_tokens):
            graph.replay()
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        return {"tok_per_s": batch * new_tokens / elapsed, "ms_per_step": 1e3 * elapsed / new_tokens}
