"""The language-modelling loss shared by every model."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

IGNORE_INDEX = -1


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the targets that are not IGNORE_INDEX.

    A batch whose targets are all masked (possible with an assistant-only loss) gives 0, not NaN.
    """
    total = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return total / (targets != IGNORE_INDEX).sum().clamp(min=1)


def head_loss(
    head: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """lm_loss of head(x), computing logits only at positions whose target counts.

    With an assistant-only loss many positions carry no target; skipping their projection onto the
    vocabulary (the largest matrix of a small GPT) saves a good share of every training step.
    """
    keep = targets != IGNORE_INDEX
    if not bool(keep.all()):
        x, targets = x[keep], targets[keep]  # (N, C), (N,)
    return lm_loss(head(x), targets)
