"""An LSTM language model: embedding, a stack of LSTM layers, and an output head."""

from __future__ import annotations

import torch
import torch.nn as nn

from shoshin.config import ModelConfig
from shoshin.models.loss import head_loss


class LSTMState:
    """The carried recurrent state (h, c), each (n_layer, B, C), and how many tokens each row has read.

    The LSTM's counterpart of the GPT's KV cache: forward reads it and replaces it in place.
    `lengths` lives on the host (CPU), as the KV cache's does.
    """

    def __init__(self, n_layer, batch_size, hidden, device=None, dtype=None):
        self.h = torch.zeros(n_layer, batch_size, hidden, device=device, dtype=dtype)
        self.c = torch.zeros(n_layer, batch_size, hidden, device=device, dtype=dtype)
        self.lengths = torch.zeros(batch_size, dtype=torch.long)
        self.max_len = None  # no position limit: the state summarises the whole history

    def row(self, b: int) -> LSTMState:
        """A view of row b alone (updates go through to this state)."""
        return self.rows(b, b + 1)

    def rows(self, start: int, stop: int) -> LSTMState:
        """A view of rows start..stop-1 (updates go through to this state)."""
        view = LSTMState.__new__(LSTMState)
        view.h, view.c = self.h[:, start:stop], self.c[:, start:stop]
        view.lengths, view.max_len = self.lengths[start:stop], None
        return view

    def reset(self, b: int | None = None) -> None:
        rows = slice(None) if b is None else slice(b, b + 1)
        self.h[:, rows] = 0
        self.c[:, rows] = 0
        self.lengths[rows] = 0


class LSTM(nn.Module):
    # Declared for generation: padding would be read into the carried state, so prompts of
    # different lengths never share a prefill; and there is no position window.
    right_padding_safe = False
    context_window = None  # the state summarises the whole history

    def __init__(self, config: ModelConfig):
        super().__init__()
        assert config.vocab_size > 0, "vocab_size must be set from the tokenizer"
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(
            config.n_embd,
            config.n_embd,
            num_layers=config.n_layer,
            dropout=config.dropout if config.n_layer > 1 else 0.0,
            batch_first=True,
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if (
            config.tie_embeddings
        ):  # input and output sizes match (both n_embd), so tying is possible
            self.lm_head.weight = self.wte.weight
        nn.init.normal_(self.wte.weight, mean=0.0, std=0.02)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> LSTMState:
        """An empty (zero) recurrent state for `batch_size` rows; max_len is ignored."""
        p = self.wte.weight
        return LSTMState(self.config.n_layer, batch_size, self.config.n_embd, p.device, p.dtype)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: LSTMState | None = None,
        logits_at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) for token ids idx (B, T); with targets (B, T), the mean loss instead.

        Without a state, every window starts from zero; with one, it continues from it and updates it.
        With logits_at (B,), only the logits at that position of each row, (B, 1, vocab).
        """
        x = self.drop(self.wte(idx))  # (B, T, C)
        if cache is None:
            out, _ = self.lstm(x)  # (B, T, C)
        else:
            out, (h, c) = self.lstm(x, (cache.h, cache.c))
            cache.h.copy_(h)
            cache.c.copy_(c)
            cache.lengths += idx.size(1)
        out = self.drop(out)
        if targets is not None:
            return head_loss(self.lm_head, out, targets)
        if logits_at is not None:
            out = out[torch.arange(out.size(0), device=out.device), logits_at.to(out.device)][
                :, None
            ]
        return self.lm_head(out)  # (B, T or 1, vocab)
