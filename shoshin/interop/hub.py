"""The Hugging Face hub: which names are worth asking it about, and fetching a checkpoint from it.

Only a name shaped like a hub id (`owner/name`, or one of the GPT ids in KNOWN_HUB_MODELS) goes to
the network; anything else is a run's name, so a typo is reported at once. A download that cannot
happen (offline, unknown repository) is one clean line.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

from shoshin.errors import ShoshinError

HUB_ID = re.compile(r"^[A-Za-z][\w.-]*/[\w.-]+$")  # owner/name
# The hub ids without an owner that shoshin looks up (the GPT-1 / GPT-2 checkpoints it loads);
# any other name without a slash is a run name, never sent to the network.
KNOWN_HUB_MODELS = ("gpt2", "distilgpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "openai-gpt")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")


def looks_like_hub_id(src: str) -> bool:
    """`owner/name` or one of KNOWN_HUB_MODELS: the names worth asking the hub about.

    Anything else (`nosuchrun`, a mistyped run id) is a user's mistake to report at once, never a
    download attempt.
    """
    if Path(src).exists():
        return False
    if "/" not in src:
        return src in KNOWN_HUB_MODELS
    if Path(src).parent.is_dir():
        return False  # runs/missing-run is a mistyped path, not an organisation's model
    return bool(HUB_ID.match(src))


def close_hub_model(src: str) -> str | None:
    """The known hub model id `src` is probably a typo of (`gtp2` -> `gpt2`), if any."""
    match = difflib.get_close_matches(src, KNOWN_HUB_MODELS, n=1, cutoff=0.75)
    return match[0] if match else None


def download(repo_id: str) -> Path:
    """Fetch a hub checkpoint's config, weights and tokenizer files (or find them in the HF cache)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ShoshinError(
            f"loading {repo_id!r} from the Hugging Face hub needs huggingface_hub: "
            "pip install 'shoshin[hf]' (or give a local checkpoint directory)"
        ) from None
    base = ["config.json", *TOKENIZER_FILES]
    try:
        # Safetensors first; only a repository without them gets its pickle-free-read .bin.
        folder = Path(
            snapshot_download(
                repo_id,
                allow_patterns=[
                    *base,
                    "model.safetensors",
                    "model-*.safetensors",
                    "model.safetensors.index.json",
                ],
            )
        )
        if not any(folder.glob("model*.safetensors")):
            folder = Path(snapshot_download(repo_id, allow_patterns=[*base, "pytorch_model.bin"]))
    except Exception as exc:
        raise ShoshinError(_download_failure(repo_id, exc)) from None
    return folder


def _download_failure(repo_id: str, exc: Exception) -> str:
    """One clean line for a hub id that could not be had: offline, unknown, or another failure."""
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    what = f"{repo_id!r} is not a run (see: shoshin runs)"
    if isinstance(exc, LocalEntryNotFoundError):  # offline, or the hub cannot be reached
        cause = str(exc).partition("Got: ")[2].partition("\n")[0]
        why = (
            "HF_HUB_OFFLINE is set"
            if huggingface_offline()
            else f"the hub cannot be reached: {cause[:100]}"
            if cause
            else "the hub cannot be reached"
        )
        return (
            f"{what}, and not in the local Hugging Face cache ({why}); download it where there "
            "is network, or give a local checkpoint folder"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return (
            f"{what}, and the Hugging Face hub has no model {repo_id} (a private or gated one "
            "needs: huggingface-cli login)"
        )
    lines = str(exc).strip().splitlines()
    reason = lines[0][:160] if lines else ""
    return (
        f"{what} nor a local checkpoint, and downloading it from the Hugging Face hub failed "
        f"({type(exc).__name__}{': ' + reason if reason else ''})"
    )


def huggingface_offline() -> bool:
    """True when HF_HUB_OFFLINE asks huggingface_hub never to use the network."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
