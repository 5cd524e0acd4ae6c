"""Tiny random Hugging Face GPT-1 / GPT-2 / Llama / Qwen3 checkpoints, built locally (no downloads)
for the tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TEXT = [
    "Hello there! How are you doing today?",
    "I am fine, thanks. What did you do on the weekend?",
    "We went hiking in the hills and had a picnic by the lake.",
    "That sounds lovely; I mostly read books and cooked pasta.",
    "Do you like music? I play the guitar a little.",
] * 20


def gpt2_tokenizer(vocab_size: int = 320):
    """A GPT-2-style byte-level BPE, trained on TEXT and wrapped as GPT2TokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TEXT, trainer=trainer)
    eot = "<|endoftext|>"
    return GPT2TokenizerFast(tokenizer_object=tok, bos_token=eot, eos_token=eot, unk_token=eot)


def make_gpt2(
    folder: Path, seed: int = 0, n_positions: int = 64, init_std: float = 0.3, extra_rows: int = 0
) -> Path:
    """GPT2LMHeadModel(n_layer=2, n_embd=32, n_head=4) with random weights + its tokenizer;
    `extra_rows`: embedding rows beyond the tokenizer's (padded, as nanoGPT's 50,304)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = gpt2_tokenizer()
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=4,
        n_positions=n_positions,
        vocab_size=len(tokenizer) + extra_rows,
        bos_token_id=0,
        eos_token_id=0,
        initializer_range=init_std,  # 0.3: any layout mistake shows in the logits
    )
    model = GPT2LMHeadModel(config)
    _randomise_norms(model)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)


def make_gpt1(folder: Path, seed: int = 0, n_positions: int = 64) -> Path:
    """OpenAIGPTLMHeadModel(n_layer=2, n_embd=32, n_head=4) + an OpenAIGPTTokenizer vocab.json/merges.txt."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import OpenAIGPTConfig, OpenAIGPTLMHeadModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>", end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>"], end_of_word_suffix="</w>", show_progress=False
    )
    tok.train_from_iterator(TEXT, trainer=trainer)
    tok.model.save(str(folder))  # vocab.json + merges.txt, the files the original openai-gpt ships
    vocab_size = len(json.loads((folder / "vocab.json").read_text()))
    torch.manual_seed(seed)
    config = OpenAIGPTConfig(
        n_layer=2,
        n_embd=32,
        n_head=4,
        n_positions=n_positions,
        vocab_size=vocab_size,
        initializer_range=0.3,
    )
    model = OpenAIGPTLMHeadModel(config)
    _randomise_norms(model)
    model.save_pretrained(folder)
    return folder


def make_llama(
    folder: Path,
    qwen3: bool = False,
    tie: bool = False,
    n_kv_head: int = 2,
    extra_rows: int = 0,
    seed: int = 0,
    n_positions: int = 64,
) -> Path:
    """LlamaForCausalLM, or Qwen3ForCausalLM (QK-norm, head_dim 16 wider than 32 / 4 heads), with
    2 layers, width 32, 4 query heads sharing `n_kv_head` key/value heads, random weights, a
    rope_theta other than the default, and a GPT-2-style tokenizer (as SmolLM2 has)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    tokenizer = gpt2_tokenizer()
    torch.manual_seed(seed)
    config_class, model_class = (
        (Qwen3Config, Qwen3ForCausalLM) if qwen3 else (LlamaConfig, LlamaForCausalLM)
    )
    config = config_class(
        vocab_size=len(tokenizer) + extra_rows,
        hidden_size=32,
        intermediate_size=72,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=n_kv_head,
        head_dim=16 if qwen3 else 8,
        max_position_embeddings=n_positions,
        rms_norm_eps=1e-5,
        rope_theta=5000.0,
        tie_word_embeddings=tie,
        bos_token_id=0,
        eos_token_id=0,
        initializer_range=0.3,
    )
    model = model_class(config)
    _randomise_norms(model)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)


def _randomise_norms(model: torch.nn.Module) -> None:
    """Norms start at (1, 0) and biases at 0: randomise them so a mix-up cannot hide."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)


NAMES = ["Ann", "Bob", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana"]
FOODS = ["pasta", "soup", "rice", "tacos", "salad", "curry"]


def write_chat(path, n: int = 48):
    """Learnable, distinct conversations: the assistant's reply follows from the user's message."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            name, food = NAMES[i % len(NAMES)], FOODS[(i // len(NAMES)) % len(FOODS)]
            messages = [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"Hi, I am {name}. What is for dinner?"},
                {"role": "assistant", "content": f"Hello {name}! We have {food} tonight."},
                {"role": "user", "content": "Thanks!"},
                {"role": "assistant", "content": f"Enjoy the {food}, {name}."},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path
