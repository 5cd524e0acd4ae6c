"""`shoshin export RUN --out DIR`: a Hugging Face checkpoint that `transformers` loads as it is
(`--adapter`: a LoRA run's adapters for `peft`, on top of its base model).

GPT-2-layout (pre-norm) models become `GPT2LMHeadModel`, GPT-1-layout (post-norm) models
`OpenAIGPTLMHeadModel`; the tokenizer is written as `tokenizer.json` for `PreTrainedTokenizerFast`,
with a chat template when the run was trained on chat, so `apply_chat_template` renders the
same `<|role|>content<|end|>` format the model learned.

`generation_config.json` lists as `eos_token_id` the ids `shoshin sample` stops at
(`shoshin.data.chat.stop_token_ids`: `<|end|>`, `<|endoftext|>` and the role tokens), so
`model.generate` on the export ends a reply where shoshin does. A chat run's end-of-sequence token
(config.json, tokenizer) is `<|end|>`, the end of every message.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from shoshin.config import Config
from shoshin.data.chat import (
    CALL_CLOSE,
    CALL_OPEN,
    RESULT_CLOSE,
    RESULT_OPEN,
    TOOLS_HEADER,
    is_chat_tokenizer,
    stop_token_ids,
)
from shoshin.data.tokenizers import END, EOT, BpeTokenizer, load_tokenizer
from shoshin.errors import ShoshinError
from shoshin.interop.hf import shoshin_to_hf
from shoshin.loading import load, lora_parts, resolve_source
from shoshin.models import GPT
from shoshin.runs.store import Run
from shoshin.training.checkpoint import checkpoint_path

# shoshin.data.chat.plain_messages then render_chat, in Jinja, for transformers'
# apply_chat_template (tests hold the two to the same ids): tools offered after the system
# message, assistant tool calls and `tool` results as the text shoshin.data.chat documents. A role
# without a token is an error, as in shoshin, not text that looks like one.
CHAT_TEMPLATE = (
    "{%- set header = " + json.dumps(TOOLS_HEADER) + " -%}"
    "{%- set ns = namespace(tools='') -%}"
    "{%- for tool in tools or [] -%}"
    "{%- set ns.tools = ns.tools + ((tool.function if tool.function is defined else tool)|tojson)"
    " + '\\n' -%}"
    "{%- endfor -%}"
    "{%- if tools and (not messages or messages[0]['role'] != 'system') -%}"
    "{{ '<|system|>' + header + ns.tools + '<|end|>' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] -%}"
    "{{ raise_exception('the roles are system, user, assistant and tool, not ' + message['role']) }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'tool' -%}"
    "{{ '<|user|>" + RESULT_OPEN + "' + message['content'] + '" + RESULT_CLOSE + "<|end|>' }}"
    "{%- else -%}"
    "{{ '<|' + message['role'] + '|>' + (message['content'] or '') }}"
    "{%- if loop.first and message['role'] == 'system' and tools -%}"
    "{{ '\\n\\n' + header + ns.tools }}"
    "{%- endif -%}"
    "{%- for call in message['tool_calls'] or [] -%}"
    "{%- set args = call['function']['arguments'] -%}"
    "{{ '\\n' if message['content'] or not loop.first else '' }}"
    "{{ '" + CALL_OPEN + "{\"name\": ' + call['function']['name']|tojson + ', \"arguments\": ' }}"
    "{{ args if args is string else args|tojson }}{{ '}" + CALL_CLOSE + "' }}"
    "{%- endfor -%}"
    "{{ '<|end|>' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}"
)
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # where transformers >= 4.47 looks for it


def export(
    src: str,
    out: str | Path,
    checkpoint: str = "latest",
    runs_dir: str | Path | None = None,
    adapter: bool = False,
) -> Path:
    """Write run (or checkpoint) `src` to folder `out` as a transformers checkpoint; returns `out`.

    A LoRA run is written with its adapters merged into the weights; with `adapter=True`, as
    PEFT writes it instead: `out/adapter` (adapter_config.json, adapter_model.safetensors) on top
    of `out/base`, the base model as a transformers checkpoint.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ShoshinError(f"{out} already exists and is not empty; choose another --out")
    if adapter:
        run = resolve_source(src, runs_dir)
        if not isinstance(run, Run) or not run.config.lora.rank:
            raise ShoshinError(
                f"{src} is not a LoRA run: --adapter exports the adapters of a run fine-tuned "
                "with lora.rank > 0 (export without --adapter writes the whole model)"
            )
        path = checkpoint_path(run.path / "checkpoints", checkpoint)
        model, adapters = lora_parts(run, path)
        tokenizer = load_tokenizer(run.path)
    else:
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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        if adapter:
            write_transformers(model, tokenizer, tmp / "base")
            write_peft_adapter(run.config, adapters, tmp / "adapter", out.resolve() / "base")
        else:
            write_transformers(model, tokenizer, tmp)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_transformers(model: GPT, tokenizer: BpeTokenizer, folder: Path) -> None:
    """Write `model` and `tokenizer` into `folder` as a transformers checkpoint."""
    hf_config, tensors = shoshin_to_hf(model)
    specials = tokenizer.special_tokens
    chat = is_chat_tokenizer(tokenizer)
    eot = specials.get(EOT)
    eos = END if chat else EOT
    hf_config.update(bos_token_id=eot, eos_token_id=specials.get(eos))
    generation_config = {
        key: value
        for key, value in (
            ("bos_token_id", eot),
            ("eos_token_id", stop_token_ids(tokenizer)),  # generate() stops at any of them
            ("pad_token_id", eot),  # what generate() pads a batch with
        )
        if value not in (None, [])  # a bare GPT-1 checkpoint has no <|endoftext|>
    }
    tokenizer_config: dict = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model.config.block_size,
        "clean_up_tokenization_spaces": False,
    }
    if eot is not None:
        tokenizer_config.update(bos_token=EOT, eos_token=eos, pad_token=EOT)
    if "<unk>" in specials:
        tokenizer_config["unk_token"] = "<unk>"
    if chat:
        tokenizer_config["chat_template"] = CHAT_TEMPLATE  # transformers < 4.47 reads it here

    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    (folder / "generation_config.json").write_text(json.dumps(generation_config, indent=2) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    if chat:
        (folder / CHAT_TEMPLATE_FILE).write_text(CHAT_TEMPLATE)
    tokenizer.save(folder)  # tokenizer.json


def write_peft_adapter(
    config: Config, adapters: dict[str, torch.Tensor], folder: Path, base: Path
) -> None:
    """Write a LoRA run's adapters as PEFT saves them, for the transformers model in `base`.

    The adapted layers have the same names in transformers' GPT-2 and GPT-1 (`c_attn`, `c_proj`,
    `c_fc`) under its `transformer.` prefix. Those are `Conv1D` layers, whose weight is stored
    (in, out): `fan_in_fan_out` tells PEFT so, for merging. The adapter matrices themselves
    (A: rank x in, B: out x rank) are the same whatever the layer stores, so they copy unchanged.
    """
    from shoshin.models.lora import ADAPTER_PREFIX, peft_config

    lora_config = peft_config(
        config.model,
        config.lora,
        fan_in_fan_out=True,
        task_type="CAUSAL_LM",
        base_model_name_or_path=str(base),
    )
    lora_config.save_pretrained(str(folder))  # adapter_config.json
    tensors = {
        ADAPTER_PREFIX + "transformer." + name.removeprefix(ADAPTER_PREFIX): t.contiguous()
        for name, t in adapters.items()
    }
    save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})
