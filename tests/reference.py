"""The naive reference generator the engine is held to: no cache, the whole prefix re-run at
every step, the model's window sliding one token at a time. It lives with the tests because that is
all it is for; `shoshin sample --no-cache` is the engine with the same sliding rule
(`Engine(model, overflow_keep=context_window)`), and tests hold the two to the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from shoshin.generation.params import SamplingParams
from shoshin.generation.sampling import TokenHistory, ends_with_stop, make_generator, sample_next


@torch.no_grad()
def naive_generate(
    model: nn.Module,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    logits_out: list[torch.Tensor] | None = None,
    constraints=None,
) -> list[int]:
    """New token ids continuing `prompt_ids`, re-running the model on the whole prefix at every step.

    The reference the engine is held to: a model with a window (a GPT) sees the last
    `context_window` tokens, so its window slides by one token; a recurrent model sees everything.
    Stops after a stop token or stop sequence (kept in the output), or where params.grammar (which
    needs `constraints`, a generation.constraints.Constraints) is complete. With `logits_out`,
    each step's raw next-token logits (1, vocab) are appended to it.
    """
    if not prompt_ids:
        raise ValueError("prompt_ids must hold at least one token")
    params.validate()
    if params.grammar is not None and constraints is None:
        raise ValueError("a grammar needs `constraints` (the vocabulary's Constraints)")
    constraint = constraints.start(params.grammar, params.stop_ids) if params.grammar else None
    device = next(model.parameters()).device
    generator = make_generator(params.seed)
    was_training = model.training
    model.eval()
    window = model.context_window
    history = TokenHistory(list(prompt_ids), len(prompt_ids))
    stops = set(params.stop_ids)
    try:
        for _ in range(params.max_new_tokens):
            context = history.ids if window is None else history.ids[-window:]
            logits = model(torch.tensor([context], dtype=torch.long, device=device))[:, -1, :]
            if logits_out is not None:
                logits_out.append(logits)
            allowed = constraints.allowed([constraint]) if constraint else None
            token = int(sample_next(logits, [params], [history], [generator], allowed)[0])
            history.ids.append(token)
            if constraint is not None:
                constraint.advance(token)
            if ends_with_stop(history.generated, stops, params.stop_sequences):
                break
            if constraint is not None and constraint.done:
                break
    finally:
        model.train(was_training)
    return history.generated
