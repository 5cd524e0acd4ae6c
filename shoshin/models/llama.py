"""A Llama/Qwen3-layout language model, readable top to bottom (after nanoGPT and transformers'
modeling_llama).

What changes from the GPT-2 layout (models/gpt.py):
- RMSNorm instead of LayerNorm, and no biases anywhere;
- rotary position embeddings (RoPE) instead of learned positions: queries and keys are rotated
  by an angle proportional to their position, so attention scores depend on relative distance;
- grouped-query attention: n_kv_head key/value heads, each shared by n_head / n_kv_head queries
  (a smaller KV cache);
- a gated MLP, down(silu(gate(x)) * up(x)) (SwiGLU);
- optionally Qwen3's QK-norm: an RMSNorm over each head's queries and keys before the rotation.

Two options go beyond Llama/Qwen3 for small models trained from scratch: `model.mlp=relu2`
(down(relu(up(x))^2)) and `model.logit_softcap`; transformers cannot run a model that uses them.

The module names are those of transformers' LlamaForCausalLM (`layers.0.self_attn.q_proj`, ...),
less its `model.` prefix: checkpoints convert by renaming alone, and LoRA adapters apply there.
The KV cache, with its per-row lengths, is the GPT's; a row's rotary positions come from its length.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel

from shoshin.architectures import head_dim, intermediate_size, kv_heads
from shoshin.config import ModelConfig
from shoshin.models.gpt import (
    CACHED_ATTENTION_KERNELS,
    CacheStep,
    KVCache,
    TiedEmbedding,
    at_positions,
    token_positions,
)
from shoshin.models.loss import head_loss


def rotary(positions: torch.Tensor, dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles at `positions` (T,) or (B, T): (..., T, dim), float32.

    Frequency i is theta^(-2i/dim); the angles are laid out twice, [f_0..f_{d/2-1}, f_0..], to
    match rotate_half below (transformers' convention, so checkpoints need no permutation).
    Computed per forward from the positions: a few hundred values, and exact at any length.
    """
    inv_freq = 1.0 / theta ** (
        torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim
    )
    angles = positions.float()[..., None] * inv_freq  # (..., T, dim/2)
    emb = torch.cat((angles, angles), dim=-1)  # (..., T, dim)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, nh, T, hs) by the angles (T, hs) or (B, 1, T, hs)."""
    return (x * cos + rotate_half(x) * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = kv_heads(config)
        self.head_dim = hs = head_dim(config)
        self.dropout = config.dropout
        C = config.n_embd
        self.q_proj = nn.Linear(C, self.n_head * hs, bias=False)
        self.k_proj = nn.Linear(C, self.n_kv_head * hs, bias=False)
        self.v_proj = nn.Linear(C, self.n_kv_head * hs, bias=False)
        self.o_proj = nn.Linear(self.n_head * hs, C, bias=False)
        self.qkv_proj: nn.Linear | None = None  # q, k and v in one matmul, after Llama.fuse()
        if config.qk_norm:  # Qwen3: one RMSNorm over each head's width, shared by all heads
            self.q_norm = nn.RMSNorm(hs, eps=config.layer_norm_eps)
            self.k_norm = nn.RMSNorm(hs, eps=config.layer_norm_eps)
        else:
            self.q_norm = self.k_norm = nn.Identity()
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        cache: KVCache | None = None,
        layer: int = 0,
        step: CacheStep | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.size()
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_dim
        if self.qkv_proj is not None:
            q, k, v = self.qkv_proj(x).split([nh * hs, nkv * hs, nkv * hs], dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = self.q_norm(q.view(B, T, nh, hs))  # (B, T, nh, hs)
        k = self.k_norm(k.view(B, T, nkv, hs))  # (B, T, nkv, hs)
        v = v.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        q = apply_rotary(q.transpose(1, 2), *rope)  # (B, nh, T, hs)
        k = apply_rotary(k.transpose(1, 2), *rope)  # (B, nkv, T, hs)
        gqa = nkv != nh  # SDPA broadcasts each kv head to its group of queries
        if cache is None:
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                dropout_p=self.dropout if self.training else 0.0,
                is_causal=True,
                enable_gqa=gqa,
            )  # (B, nh, T, hs)
        else:
            k, v = cache.write(layer, step, k, v)  # (B, nkv, S, hs): all cached so far
            with sdpa_kernel(CACHED_ATTENTION_KERNELS):
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=step.mask, enable_gqa=gqa)
        y = y.transpose(1, 2).reshape(B, T, nh * hs)  # re-assemble the heads
        return self.resid_dropout(self.o_proj(y))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        hidden = intermediate_size(config)
        self.relu2 = config.mlp == "relu2"
        if not self.relu2:
            self.gate_proj = nn.Linear(config.n_embd, hidden, bias=False)
        self.up_proj = nn.Linear(config.n_embd, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, config.n_embd, bias=False)
        self.dropout = nn.Dropout(config.dropout)
        self.gate_up_proj: nn.Linear | None = None  # gate and up in one matmul, after fuse()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.relu2:
            h = F.relu(self.up_proj(x)).square()
        elif self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.silu(self.gate_proj(x)) * self.up_proj(x)
        return self.dropout(self.down_proj(h))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(config.n_embd, eps=config.layer_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = nn.RMSNorm(config.n_embd, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, rope, cache=None, layer: int = 0, step=None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, cache, layer, step)
        return x + self.mlp(self.post_attention_layernorm(x))


def _fused(*linears: nn.Linear) -> nn.Linear:
    """One bias-free Linear whose output is the given layers' outputs side by side."""
    weight = torch.cat([lin.weight.detach() for lin in linears])
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")  # no init
    fused.weight = nn.Parameter(weight, requires_grad=False)
    return fused


class Llama(nn.Module):
    # Declared for generation (see models/gpt.py): a token never attends to later positions, and a
    # row's rotary positions come from its own cache length, so right padding is harmless.
    right_padding_safe = True

    def __init__(self, config: ModelConfig):
        super().__init__()
        assert config.vocab_size > 0, "vocab_size must be set from the tokenizer"
        self.config = config
        embedding = TiedEmbedding if config.tie_embeddings else nn.Embedding
        self.embed_tokens = embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.norm = nn.RMSNorm(config.n_embd, eps=config.layer_norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self._init_weights()

    def _init_weights(self) -> None:
        """Small normal weights; every output projection (and an untied head) starts at zero, so
        each block starts as the identity on the residual stream (modded-nanogpt's choice)."""
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")) or (
                name == "lm_head.weight" and not self.config.tie_embeddings
            ):
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, mean=0.0, std=0.02)

    @property
    def context_window(self) -> int:
        """Tokens the model sees at once: block_size, the positions it trains at."""
        return self.config.block_size

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for `batch_size` rows of up to max_len (default block_size) tokens."""
        c = self.config
        p = self.embed_tokens.weight
        max_len = min(max_len or c.block_size, c.block_size)
        return KVCache(c.n_layer, batch_size, kv_heads(c), head_dim(c), max_len, p.device, p.dtype)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        logits_at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) for token ids idx (B, T); with targets (B, T), the mean loss instead.

        The cache and logits_at work as in GPT.forward.
        """
        step, pos = token_positions(idx, cache, self.config.block_size)
        cos, sin = rotary(pos, head_dim(self.config), self.config.rope_theta)
        if cache is not None:
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, hs): one set of positions per row
        x = self.drop(self.embed_tokens(idx))  # (B, T, C)
        for i, block in enumerate(self.layers):
            x = block(x, (cos, sin), cache, i, step)
        if cache is not None:
            cache.lengths += idx.size(1)  # advanced once, by the model, after every layer wrote
        x = self.norm(x)
        if targets is not None:
            return head_loss(self.logits, x, targets)
        return self.logits(at_positions(x, logits_at))  # (B, T or 1, vocab)

    def fuse(self) -> None:
        """For inference (in place): each layer's q, k, v projections become one matmul, and so do
        the MLP's gate and up: three kernel calls fewer per layer, the same outputs up to float
        rounding. The separate layers are gone afterwards (no training or export from here)."""
        for block in self.layers:
            attn, mlp = block.self_attn, block.mlp
            if type(attn.q_proj) is not nn.Linear:  # e.g. LoRA adapters not merged: leave as is
                continue
            attn.qkv_proj = _fused(attn.q_proj, attn.k_proj, attn.v_proj)
            del attn.q_proj, attn.k_proj, attn.v_proj
            if not mlp.relu2:
                mlp.gate_up_proj = _fused(mlp.gate_proj, mlp.up_proj)
                del mlp.gate_proj, mlp.up_proj

    def decode_static(
        self, idx: torch.Tensor, cache: KVCache, starts: torch.Tensor
    ) -> torch.Tensor:
        """Logits (B, 1, vocab) of one new token per row at positions `starts` (B,), attending
        over the whole cache through a mask: fixed shapes for a compiled step or a CUDA graph (see
        GPT.decode_static). The caller advances cache.lengths."""
        step = cache.static_step(starts)
        cos, sin = rotary(starts[:, None], head_dim(self.config), self.config.rope_theta)
        x = self.embed_tokens(idx)  # (B, 1, C)
        for i, block in enumerate(self.layers):
            x = block(x, (cos[:, None], sin[:, None]), cache, i, step)
        return self.logits(self.norm(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The output head, soft-capped when model.logit_softcap is set."""
        logits = self.lm_head(x)
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap) if cap else logits
