"""A GPT language model, readable top to bottom (after nanoGPT).

Two layouts, so that real checkpoints load exactly:
- norm="pre" (GPT-2): x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)); a final LayerNorm ln_f.
- norm="post" (GPT-1): x = ln_1(x + attn(x)); x = ln_2(x + mlp(x)); no final LayerNorm.

Inference passes a KVCache into forward: each layer appends its keys and values for the new tokens,
and attends over everything cached so far. Every row of a batch has its own length, so prompts of
different lengths (and requests that join a running batch) share one cache.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from shoshin.config import ModelConfig
from shoshin.models.loss import head_loss


class KVCache:
    """Preallocated keys and values of every layer, with an explicit length per batch row.

    k, v: (n_layer, B, nh, max_len, hs). lengths: (B,) tokens already cached in each row, kept on
    the host (CPU) whatever the device: the engine's bookkeeping reads it every step, and a host
    copy costs no device synchronisation. The model appends the new tokens' keys/values at those
    positions and then advances `lengths`.
    """

    def __init__(self, n_layer, batch_size, n_head, head_dim, max_len, device=None, dtype=None):
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.lengths = torch.zeros(batch_size, dtype=torch.long)
        self.max_len = max_len

    def row(self, b: int) -> KVCache:
        """A view of row b alone (writes go through to this cache), e.g. to prefill one prompt."""
        return self.rows(b, b + 1)

    def rows(self, start: int, stop: int) -> KVCache:
        """A view of rows start..stop-1 (writes go through), e.g. to decode only the busy rows of a server."""
        view = KVCache.__new__(KVCache)
        view.k, view.v = self.k[:, start:stop], self.v[:, start:stop]
        view.lengths, view.max_len = self.lengths[start:stop], self.max_len
        return view

    def reset(self, b: int | None = None) -> None:
        """Forget row b (or every row); the stale values are never attended to again."""
        if b is None:
            self.lengths.zero_()
        else:
            self.lengths[b] = 0

    def plan(self, T: int, device: torch.device) -> CacheStep:
        """Where the next forward pass of T new tokens per row writes, and what it attends over.

        Planned once per forward on the host, so that the layers run without reading anything
        back from the device (and a compiled decode step sees no data-dependent Python).
        """
        lengths = self.lengths.tolist()
        if max(lengths) + T > self.max_len:
            raise ValueError(f"KV cache overflow: {max(lengths)} + {T} > {self.max_len}")
        starts = self.lengths.to(device, non_blocking=True)
        span = max(lengths) + T
        uniform = lengths.count(lengths[0]) == len(lengths)
        mask = None
        if not (uniform and T == 1):  # else one new token per row may see every cached key
            q_pos = starts[:, None] + torch.arange(T, device=device)  # (B, T) absolute positions
            k_pos = torch.arange(span, device=device)  # (S,)
            mask = (k_pos[None, None, :] <= q_pos[:, :, None])[:, None]  # (B, 1, T, S)
        return CacheStep(lengths[0] if uniform else None, lengths, starts, span, mask)

    def static_step(self, starts: torch.Tensor) -> CacheStep:
        """The step of one new token per row at positions `starts` (B,), on the model's device,
        attending over the whole cache through a mask: no host value in it, and shapes that depend
        only on the cache (what a compiled step or a CUDA graph needs)."""
        k_pos = torch.arange(self.max_len, device=starts.device)
        mask = (k_pos[None, :] <= starts[:, None])[:, None, None]  # (B, 1, 1, S)
        return CacheStep(None, [], starts, self.max_len, mask)

    def write(self, layer: int, step: CacheStep, k: torch.Tensor, v: torch.Tensor):
        """Write layer's new keys/values (B, nh, T, hs) at each row's length; return the cached
        keys/values to attend over, (B, nh, S, hs)."""
        B, _, T, _ = k.shape
        ck, cv = self.k[layer], self.v[layer]  # (B, nh, max_len, hs)
        if step.start is not None:
            s = step.start
            ck[:, :, s : s + T], cv[:, :, s : s + T] = k, v
        elif T == 1:
            rows = torch.arange(B, device=k.device)
            ck[rows, :, step.starts], cv[rows, :, step.starts] = k[:, :, 0], v[:, :, 0]
        else:
            for b, s in enumerate(step.lengths):
                ck[b, :, s : s + T], cv[b, :, s : s + T] = k[b], v[b]
        return ck[:, :, : step.span], cv[:, :, : step.span]


@dataclass
class CacheStep:
    """One forward pass's use of a KVCache, planned on the host (see KVCache.plan)."""

    start: int | None  # every row's length, when all rows are equally long
    lengths: list[int]  # each row's length (host copy)
    starts: torch.Tensor  # (B,) the same on the model's device: positions and write indices
    span: int  # S: cached positions attended to, the longest row's length + T
    mask: torch.Tensor | None  # (B, 1, T, S), or None when every new token sees all S


def token_positions(
    idx: torch.Tensor, cache: KVCache | None, block_size: int
) -> tuple[CacheStep | None, torch.Tensor]:
    """Where the tokens idx (B, T) sit: 0..T-1 without a cache (T at most block_size), else after
    each row's cached tokens. Returns the cache's plan for this pass (None without a cache) and
    the positions, (T,) or (B, T)."""
    T = idx.size(1)
    if cache is None:
        if T > block_size:
            raise ValueError(f"{T} tokens is longer than block_size {block_size}")
        return None, torch.arange(T, device=idx.device)  # (T,)
    step = cache.plan(T, idx.device)
    return step, step.starts[:, None] + torch.arange(T, device=idx.device)  # (B, T)


def at_positions(x: torch.Tensor, logits_at: torch.Tensor | None) -> torch.Tensor:
    """x (B, T, C) at position logits_at[b] of each row b, (B, 1, C); all of x when None."""
    if logits_at is None:
        return x
    return x[torch.arange(x.size(0), device=x.device), logits_at.to(x.device)][:, None]


# Attention over a KV cache leaves out cuDNN's kernel: it builds a new execution plan for every new
# key length (about 60 ms per token for GPT-2-124M in bf16 on an H100, where a step takes 3 ms),
# and a cache grows by one key per decoded token.
CACHED_ATTENTION_KERNELS = [
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(
            config.n_embd, 3 * config.n_embd, bias=config.bias
        )  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        layer: int = 0,
        step: CacheStep | None = None,
    ) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if cache is None:
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
            )  # (B, nh, T, hs)
        else:
            k, v = cache.write(layer, step, k, v)  # (B, nh, S, hs): all cached so far
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=step.mask)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        # Released GPT-1 and GPT-2 checkpoints use the tanh approximation of GELU.
        self.gelu = nn.GELU(approximate="tanh" if config.activation == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.pre_norm = config.norm == "pre"
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache=None, layer: int = 0, step=None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attn(self.ln_1(x), cache, layer, step)
            x = x + self.mlp(self.ln_2(x))
        else:
            x = self.ln_1(x + self.attn(x, cache, layer, step))
            x = self.ln_2(x + self.mlp(x))
        return x


class TiedEmbedding(nn.Embedding):
    """The token embedding when the LM head shares its weight: its gradient is added as rows.

    Autograd sums this lookup's gradient into the head's, a dense (vocab, C) matrix anyway. Made
    sparse, the lookup's gradient adds only the rows of the batch's tokens; nn.Embedding's dense one
    writes a second (vocab, C) matrix of mostly zeros and adds the two (6% of a GPT-2 fine-tuning
    step on a CPU). The sum is dense, so the optimizer and DDP see an ordinary gradient; the
    module's `sparse` flag stays False to tell DDP so.
    """

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        # torch.compile does not trace sparse gradients; a compiled model keeps the dense one.
        return F.embedding(idx, self.weight, sparse=not torch.compiler.is_compiling())


class GPT(nn.Module):
    # Declared for generation (shoshin.generation reads these, never config.arch):
    # prompts of different lengths may share a prefill padded on the right, because a token never
    # attends to later positions and a row's padding is forgotten by setting its length back.
    right_padding_safe = True

    def __init__(self, config: ModelConfig):
        super().__init__()
        assert config.vocab_size > 0, "vocab_size must be set from the tokenizer"
        self.config = config
        embedding = TiedEmbedding if config.tie_embeddings else nn.Embedding
        self.wte = embedding(config.vocab_size, config.n_embd)  # token embeddings
        self.wpe = nn.Embedding(config.block_size, config.n_embd)  # learned position embeddings
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        # GPT-1 (post-norm) ends on a normalised residual already, so it has no final LayerNorm.
        self.ln_f = (
            nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
            if config.norm == "pre"
            else nn.Identity()
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections: keeps the residual stream's variance flat.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def context_window(self) -> int:
        """Tokens the model sees at once: its learned positions end at block_size."""
        return self.config.block_size

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for `batch_size` rows of up to max_len (default block_size) tokens."""
        c = self.config
        p = self.wte.weight
        max_len = min(max_len or c.block_size, c.block_size)
        head_dim = c.n_embd // c.n_head
        return KVCache(c.n_layer, batch_size, c.n_head, head_dim, max_len, p.device, p.dtype)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        logits_at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) for token ids idx (B, T); with targets (B, T), the mean loss instead.

        With a cache, idx holds only the new tokens of each row; they are appended to the cache.
        With logits_at (B,), only the logits at that position of each row, (B, 1, vocab): a
        prefill needs just the last prompt token's, and the vocabulary projection of every other
        position would be the largest matmul of the pass.
        """
        step, pos = token_positions(idx, cache, self.config.block_size)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        # attention over a cache: one kernel choice for all layers (entering it costs per call)
        with sdpa_kernel(CACHED_ATTENTION_KERNELS) if cache is not None else nullcontext():
            for i, block in enumerate(self.h):
                x = block(x, cache, i, step)
        if cache is not None:
            cache.lengths += idx.size(1)  # advanced once, by the model, after every layer wrote
        x = self.ln_f(x)
        if targets is not None:
            return head_loss(self.lm_head, x, targets)
        return self.lm_head(at_positions(x, logits_at))  # (B, T or 1, vocab)

    def decode_static(
        self, idx: torch.Tensor, cache: KVCache, starts: torch.Tensor
    ) -> torch.Tensor:
        """Logits (B, 1, vocab) of one new token per row, idx (B, 1), written at positions
        `starts` (B,) on the model's device, attending over the whole cache through a mask.

        Every shape is the cache's, whatever the rows' lengths, and nothing is read back to the
        host: a step compiles once (torch.compile) or is captured once as a CUDA graph, then
        replayed. The caller advances cache.lengths. Same arithmetic as forward() but for the
        masked positions (exact zeros in the softmax), so it agrees with it within float rounding.
        """
        step = cache.static_step(starts)
        x = self.wte(idx) + self.wpe(starts[:, None])  # (B, 1, C)
        with sdpa_kernel(CACHED_ATTENTION_KERNELS):
            for i, block in enumerate(self.h):
                x = block(x, cache, i, step)
        return self.lm_head(self.ln_f(x))
