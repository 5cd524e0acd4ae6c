"""An LSTM language model: embedding, a stack of LSTM layers, and an output head."""

from __future__ import annotations

import torch
import torch.nn as nn

from shoshin.config import ModelConfig
from shoshin.models.loss import lm_loss


class LSTM(nn.Module):
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

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab) for token ids idx (B, T); with targets (B, T), the mean loss instead."""
        x = self.drop(self.wte(idx))  # (B, T, C)
        out, _ = self.lstm(x)  # (B, T, C); the state starts at zero for every window
        logits = self.lm_head(self.drop(out))  # (B, T, vocab)
        if targets is None:
            return logits
        return lm_loss(logits, targets)
