"""`shoshin export RUN --out DIR`: a Hugging Face checkpoint that `transformers` loads as it is.

GPT-2-layout (pre-norm) models become `GPT2LMHeadModel`, GPT-1-layout (post-norm) models
`OpenAIGPTLMHeadModel`; the tokenizer is written as `tokenizer.json` for `PreTrainedTokenizerFast`,
with a chat template when the run was trained on chat, so `apply_chat_template` renders the
same `<|role|>content<|end|>` format the model learned.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import save_file

from shoshin.data.chat import is_chat_tokenizer
from shoshin.data.tokenizers import EOT, BpeTokenizer
from shoshin.errors import ShoshinError
from shoshin.interop.hf import shoshin_to_hf
from shoshin.loading import load
from shoshin.models import GPT

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def export(
    src: str, out: str | Path, checkpoint: str = "latest", runs_dir: str | Path | None = None
) -> Path:
    """Write run (or checkpoint) `src` to folder `out` as a transformers checkpoint; returns `out`."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ShoshinError(f"{out} already exists and is not empty; choose another --out")
    model, tokenizer = load(src, checkpoint, runs_dir)
    if not isinstance(model, GPT):
        raise ShoshinError(
            f"{src} is an LSTM run: transformers has no LSTM language model to load it into; "
            "only GPT runs can be exported"
        )
    if not isinstance(tokenizer, BpeTokenizer):
        raise ShoshinError(
            f"{src} uses the char tokenizer, which transformers' AutoTokenizer cannot load; "
            "only runs with a BPE or pretrained tokenizer (data.tokenizer=bpe) can be exported"
        )
    hf_config, tensors = shoshin_to_hf(model)
    specials = tokenizer.special_tokens
    eot = specials.get(EOT)
    hf_config.update(bos_token_id=eot, eos_token_id=eot)
    tokenizer_config: dict = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model.config.block_size,
        "clean_up_tokenization_spaces": False,
    }
    if eot is not None:
        tokenizer_config.update(bos_token=EOT, eos_token=EOT)
    if "<unk>" in specials:
        tokenizer_config["unk_token"] = "<unk>"
    if is_chat_tokenizer(tokenizer):
        tokenizer_config["chat_template"] = CHAT_TEMPLATE

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
        tokenizer.save(tmp)  # tokenizer.json
        if out.exists():
            out.rmdir()  # empty, checked above
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
