"""Hugging Face checkpoints loaded into shoshin's own models: GPT-1 (`openai-gpt`) and GPT-2 into
its GPT, Llama and Qwen3 into its Llama (their conversion: interop/hf_llama.py).

A checkpoint is a folder with `config.json`, the weights (`model.safetensors`, a sharded
`model.safetensors.index.json`, or `pytorch_model.bin`) and the tokenizer files, or a hub id such
as `gpt2` that `huggingface_hub` downloads into such a folder.

Two differences in the GPTs' layout, both mechanical:
- names: HF prefixes `transformer.`, and GPT-1 calls the embeddings `tokens_embed` / `positions_embed`;
- HF's `Conv1D` stores a weight as (in, out); our `nn.Linear` as (out, in): transposed both ways.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from shoshin.config import ModelConfig
from shoshin.data.tokenizers import CHAT_TOKENS, BpeTokenizer, load_tokenizer
from shoshin.errors import ShoshinError
from shoshin.interop import hf_llama
from shoshin.interop.fields import positive_int
from shoshin.interop.hub import KNOWN_HUB_MODELS, close_hub_model, download, looks_like_hub_id
from shoshin.models import GPT, build_model
from shoshin.models.fit import check_weights_fit
from shoshin.runs.provenance import sha256_file
from shoshin.storage.checkpoint import weight_shapes
from shoshin.storage.text import read_text_file

FAMILIES = {"gpt2": "GPT-2", "openai-gpt": "GPT-1", **hf_llama.FAMILIES}
# Activation names in config.json -> ours. Beware: GPT-1's "gelu" is the tanh approximation
# (transformers' OpenAIGPT maps afn="gelu" to gelu_new), while GPT-2's "gelu" is the exact one.
GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
GPT1_ACTIVATIONS = {"gelu": "gelu_tanh"}
# Linear layers whose HF weights are Conv1D, i.e. stored transposed.
CONV1D_WEIGHTS = tuple(
    f"{c}.weight" for c in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
)
# The top-level modules of our models: the tensors of an HF checkpoint that become parameters.
MODEL_PARTS = {
    "gpt": ("wte.", "wpe.", "h.", "ln_f.", "lm_head."),
    "llama": ("embed_tokens.", "layers.", "norm.", "lm_head."),
}
# Token embeddings and output heads (one row per token), and learned positions, by our names.
TOKEN_ROWS = ("wte.weight", "embed_tokens.weight", "lm_head.weight")
POSITION_ROWS = "wpe.weight"


@dataclass
class Pretrained:
    """A pretrained checkpoint loaded into shoshin: the model, its tokenizer and where they came from."""

    model: nn.Module  # a GPT or a Llama
    tokenizer: BpeTokenizer
    source: str  # as the user gave it: a hub id or a folder
    path: Path  # the local folder read
    model_type: str  # "gpt2", "openai-gpt", "llama" or "qwen3"
    weights_file: str
    weights_sha256: str

    def describe(self) -> dict:
        """What the run manifest records about its base model."""
        return {
            "source": self.source,
            "path": str(self.path),
            "model_type": self.model_type,
            "weights": self.weights_file,
            "weights_sha256": self.weights_sha256,
            "params": sum(p.numel() for p in self.model.parameters()),
        }

    def check_describes(self, config: ModelConfig, where: str) -> None:
        """Refuse a model config that is not this checkpoint's shape, before a model is built
        from it. A fine-tuning run's may differ in three ways only: a vocabulary grown by the chat
        tokens, a shorter context, its own dropout."""
        ours = self.model.config
        grown = config.vocab_size - ours.vocab_size
        same = dataclasses.replace(
            config, vocab_size=ours.vocab_size, block_size=ours.block_size, dropout=ours.dropout
        )
        if (
            same != ours
            or not 0 <= grown <= len(CHAT_TOKENS) + 1  # + <|endoftext|>, which GPT-1 lacks
            or not 1 <= config.block_size <= ours.block_size
        ):
            raise ShoshinError(
                f"{where} does not describe a model fine-tuned from {self.source} "
                f"(its shape or vocabulary differ)"
            )

    def copy_into(self, model: nn.Module, tokens: int | None = None) -> None:
        """Copy these weights into `model`, built with a grown vocabulary and maybe a shorter context.

        `tokens`: how many tokens the run's tokenizer has (default: one per embedding row). Rows
        of new tokens (the chat roles) start at the mean embedding of the checkpoint's tokens: a
        neutral point, close to every existing token, so their first updates do not disturb the
        pretrained model. A checkpoint whose embedding has more rows than its tokenizer has tokens
        (padded to a multiple, as nanoGPT's GPT-2 exports are) gives its first unused rows to the
        new tokens and keeps the rest as they are: the model keeps its padded size.
        Positions beyond model.config.block_size are dropped (a shorter fine-tuning context).
        """
        base = self.model.state_dict()
        with torch.no_grad():
            for name, param in model.state_dict().items():
                weights = base[name]
                if name in TOKEN_ROWS:
                    rows, known = weights.size(0), min(self.tokenizer.vocab_size, weights.size(0))
                    end = param.size(0) if tokens is None else tokens
                    if param.size(0) < rows:
                        raise ShoshinError(
                            f"{name} has {param.size(0)} rows, fewer than the {rows} of "
                            f"{self.source}; a fine-tuned model keeps every pretrained row"
                        )
                    param[:rows].copy_(weights)
                    param[known:end].copy_(weights[:known].mean(dim=0))
                elif name == POSITION_ROWS:
                    param.copy_(weights[: param.size(0)])
                else:
                    param.copy_(weights)


def is_checkpoint_dir(path: str | Path) -> bool:
    """True for a folder that is not a shoshin run: it is read as a Hugging Face checkpoint."""
    path = Path(path).expanduser()
    return path.is_dir() and not (path / "manifest.json").exists()


def model_config_from_hf(hf: dict, where: str) -> ModelConfig:
    """Our ModelConfig for a GPT-2, GPT-1, Llama or Qwen3 config.json; refuses variants our models
    do not compute.

    Every field used is checked (a downloaded config.json is untrusted input); its sizes are
    checked against the weights later, by read_weights, before a model is built.
    """
    if not isinstance(hf, dict):
        raise ShoshinError(f"{where} must hold a JSON object, not {type(hf).__name__}")
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        raise ShoshinError(
            f"{where}: model_type {model_type!r} is not supported "
            f"(shoshin loads {', '.join(FAMILIES)} checkpoints)"
        )
    if model_type in hf_llama.CLASSES:
        return hf_llama.config_from_hf(hf, where)
    n_layer, n_head, n_embd, n_positions, vocab_size = (
        positive_int(hf, key, where)
        for key in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size")
    )
    if n_embd % n_head:
        raise ShoshinError(f"{where}: n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
    eps = hf.get("layer_norm_epsilon", 1e-5)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
        raise ShoshinError(f"{where}: layer_norm_epsilon must be a positive number, got {eps!r}")
    tie = hf.get("tie_word_embeddings", True)
    if not isinstance(tie, bool):
        raise ShoshinError(f"{where}: tie_word_embeddings must be true or false, got {tie!r}")
    if model_type == "gpt2":
        name = hf.get("activation_function", "gelu_new")
        activation = GPT2_ACTIVATIONS.get(name)
        if hf.get("n_inner") not in (None, 4 * n_embd):
            raise ShoshinError(f"{where}: n_inner={hf['n_inner']} is not 4 * n_embd; not supported")
        for flag, ok in (
            ("scale_attn_by_inverse_layer_idx", False),
            ("scale_attn_weights", True),
            ("add_cross_attention", False),
        ):
            if hf.get(flag, ok) != ok:
                raise ShoshinError(f"{where}: {flag}={hf[flag]} is not supported")
    else:
        name = hf.get("afn", "gelu")
        activation = GPT1_ACTIVATIONS.get(name)
    if activation is None:
        raise ShoshinError(f"{where}: activation {name!r} is not supported")
    config = ModelConfig(
        arch="gpt",
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        block_size=n_positions,
        dropout=0.0,
        bias=True,
        norm="pre" if model_type == "gpt2" else "post",
        activation=activation,
        layer_norm_eps=float(eps),
        tie_embeddings=tie,
        vocab_size=vocab_size,
    )
    config.validate()
    return config


def read_weights(
    folder: Path, config: ModelConfig, described_by: str
) -> tuple[dict[str, torch.Tensor], Path]:
    """The tensors of a checkpoint folder and the file they came from; nothing is unpickled.

    `config` (read from the file `described_by`) must describe these weights and fit in memory
    (models.fit.check_weights_fit): safetensors are checked from their headers before their
    data is read, a pytorch_model.bin right after loading; either way before a model is built.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    binary = folder / "pytorch_model.bin"

    def check(shapes: dict[str, tuple[int, ...]], weights: Path) -> None:
        check_weights_fit(config, _model_shapes(shapes, config), weights, described_by)

    try:
        if single.is_file():
            check(weight_shapes(single), single)
            return load_file(single), single
        if index.is_file():
            shards = [folder / name for name in _shard_names(index)]
            shapes: dict[str, tuple[int, ...]] = {}
            for shard in shards:
                if not shard.is_file():
                    raise ShoshinError(f"checkpoint {folder} is incomplete: missing {shard.name}")
                shapes.update(weight_shapes(shard))
            check(shapes, index)
            tensors: dict[str, torch.Tensor] = {}
            for shard in shards:
                tensors.update(load_file(shard))
            return tensors, index
        if binary.is_file():
            # weights_only: torch's restricted unpickler accepts tensors and plain containers only.
            state = torch.load(binary, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or not all(
                isinstance(t, torch.Tensor) for t in state.values()
            ):
                raise ValueError("not a dict of tensors")
            check({name: tuple(t.shape) for name, t in state.items()}, binary)
            return state, binary
    except ShoshinError:
        raise
    except (SafetensorError, ValueError, RuntimeError, OSError, KeyError) as exc:
        which = next(p for p in (single, index, binary) if p.exists())
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ShoshinError(f"checkpoint file {which} is corrupt ({reason})") from None
    except Exception as exc:  # torch.load raises UnpicklingError for anything beyond tensors
        raise ShoshinError(
            f"checkpoint file {binary} is corrupt or holds more than tensors ({type(exc).__name__})"
        ) from None
    raise ShoshinError(
        f"checkpoint {folder} is incomplete: missing its weights "
        "(model.safetensors, model.safetensors.index.json or pytorch_model.bin)"
    )


def _shard_names(index: Path) -> list[str]:
    """The shard files a model.safetensors.index.json names: plain names in its own folder."""
    data = json.loads(read_text_file(index))
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(name, str) and name == Path(name).name and name not in ("", ".", "..")
        for name in weight_map.values()
    ):
        raise ValueError("weight_map must map tensor names to shard files in the same folder")
    return sorted(set(weight_map.values()))


def _our_name(hf_name: str, arch: str = "gpt") -> str | None:
    """The name of an HF tensor in our model of `arch`, or None for a buffer that is not a weight."""
    if arch == "llama":
        return hf_llama.our_name(hf_name)
    name = hf_name.removeprefix("transformer.")
    name = name.replace("tokens_embed.", "wte.").replace("positions_embed.", "wpe.")
    if name.endswith((".attn.bias", ".attn.masked_bias")):
        return None  # causal-mask buffers stored by old GPT-2 checkpoints, not weights
    return name


def _model_shapes(shapes: dict[str, tuple[int, ...]], config: ModelConfig) -> dict:
    """The tensors that become our GPT's parameters, by our names, with their shapes as our GPT
    holds them (heads of other tasks, such as GPT2DoubleHeadsModel's multiple_choice_head, are
    not loaded and not counted)."""
    out = {}
    for hf_name, shape in shapes.items():
        name = _our_name(hf_name, config.arch)
        if name is None or not name.startswith(MODEL_PARTS[config.arch]):
            continue
        if name == "lm_head.weight" and config.tie_embeddings:
            continue  # the same tensor as wte.weight
        out[name] = tuple(reversed(shape)) if name.endswith(CONV1D_WEIGHTS) else shape
    return out


def hf_to_shoshin(tensors: dict[str, torch.Tensor], model: nn.Module, where: str) -> None:
    """Rename (and for the GPTs transpose) HF tensors and load them into `model`, built from the
    checkpoint's config."""
    renamed = {}
    arch = model.config.arch
    for hf_name, tensor in tensors.items():
        name = _our_name(hf_name, arch)
        if name is None:
            continue
        if arch == "gpt" and name.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()
        renamed[name] = tensor
    expected = model.state_dict()
    if model.config.tie_embeddings:
        expected.pop("lm_head.weight")  # the same tensor as wte.weight
        renamed.pop("lm_head.weight", None)
    missing = [k for k in expected if k not in renamed]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ShoshinError(f"checkpoint {where} is incomplete: missing tensor {missing[0]}{more}")
    for key, ref in expected.items():
        if renamed[key].shape != ref.shape:
            raise ShoshinError(
                f"checkpoint {where}: tensor {key} has shape {tuple(renamed[key].shape)}, "
                f"but config.json implies {tuple(ref.shape)}"
            )
    with torch.no_grad():
        for key, ref in expected.items():
            ref.copy_(renamed[key])  # state_dict tensors share storage with the parameters


def shoshin_to_hf(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """config.json contents and HF-named tensors for our model: GPT2LMHeadModel or
    OpenAIGPTLMHeadModel for a GPT, LlamaForCausalLM or Qwen3ForCausalLM for a Llama."""
    cfg = model.config
    if cfg.arch == "llama":
        return hf_llama.shoshin_to_hf(model)
    gpt1 = cfg.norm == "post"
    if gpt1 and cfg.activation != "gelu_tanh":
        raise ShoshinError(
            "this GPT-1-layout model uses the exact GELU, which transformers' OpenAIGPT cannot "
            "express (its afn='gelu' is the tanh approximation); train with model.activation=gelu_tanh"
        )
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    if not cfg.bias:
        # transformers' GPTs always have biases; zeros compute exactly what a bias-free model does.
        with torch.device("meta"):
            full = GPT(dataclasses.replace(cfg, bias=True)).state_dict()
        for name, ref in full.items():
            state.setdefault(name, torch.zeros(ref.shape))
    tensors = {}
    for name, tensor in state.items():
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue  # transformers re-ties it to the token embedding on load
        if name.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()
        hf_name = name if name == "lm_head.weight" else f"transformer.{name}"
        if gpt1:
            hf_name = hf_name.replace(".wte.", ".tokens_embed.").replace(
                ".wpe.", ".positions_embed."
            )
        tensors[hf_name] = tensor.contiguous()
    common = {
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "initializer_range": 0.02,
        "tie_word_embeddings": cfg.tie_embeddings,
        "torch_dtype": "float32",
    }
    if gpt1:
        hf_config = {
            "architectures": ["OpenAIGPTLMHeadModel"],
            "model_type": "openai-gpt",
            "afn": "gelu",
            **common,
        }
    else:
        hf_config = {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "activation_function": "gelu_new" if cfg.activation == "gelu_tanh" else "gelu",
            "n_inner": None,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            **common,
        }
    return hf_config, tensors


def load_checkpoint(src: str | Path) -> Pretrained:
    """Load a Hugging Face checkpoint (local folder or hub id) into shoshin's model, on CPU:
    GPT-2 and GPT-1 into its GPT, LlamaForCausalLM and Qwen3ForCausalLM into its Llama."""
    src = str(src)
    folder = Path(src).expanduser()
    if not folder.exists():
        if not looks_like_hub_id(src):
            typo = close_hub_model(src)
            raise ShoshinError(
                f"checkpoint {src} does not exist"
                + (
                    f"; did you mean {typo}?"
                    if typo
                    else f" (give a checkpoint folder, a hub id owner/name, or one of "
                    f"{', '.join(KNOWN_HUB_MODELS)})"
                )
            )
        folder = download(src)
    if not folder.is_dir():
        raise ShoshinError(f"checkpoint {src} is not a folder (expected config.json + weights)")
    if (folder / "manifest.json").is_file():
        raise ShoshinError(
            f"{src} is a shoshin run, not a Hugging Face checkpoint; export it first with: "
            f"shoshin export {src} --out DIR"
        )
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ShoshinError(f"checkpoint {folder} is incomplete: missing config.json")
    try:
        hf_config = json.loads(read_text_file(config_file))
    except (OSError, ValueError) as exc:
        raise ShoshinError(f"checkpoint file {config_file} is corrupt ({exc})") from None
    config = model_config_from_hf(hf_config, str(config_file))
    tensors, weights_file = read_weights(folder, config, str(config_file))
    if not any((folder / f).is_file() for f in ("tokenizer.json", "vocab.json")):
        raise ShoshinError(
            f"checkpoint {folder} is incomplete: missing its tokenizer (tokenizer.json, or vocab.json + merges.txt)"
        )
    tokenizer = load_tokenizer(folder)
    if not isinstance(tokenizer, BpeTokenizer):
        raise ShoshinError(f"checkpoint {folder} holds a tokenizer shoshin cannot use with it")
    if tokenizer.vocab_size > config.vocab_size:
        raise ShoshinError(
            f"checkpoint {folder}: the tokenizer has {tokenizer.vocab_size} tokens but the model "
            f"only {config.vocab_size} embeddings"
        )
    model = build_model(config)
    hf_to_shoshin(tensors, model, str(weights_file))
    model.eval()
    return Pretrained(
        model=model,
        tokenizer=tokenizer,
        source=src,
        path=folder.resolve(),
        model_type=hf_config["model_type"],
        weights_file=weights_file.name,
        weights_sha256=sha256_file(weights_file),
    )


def load_recorded_base(source: str, path: str, weights_sha256: str, what: str) -> Pretrained:
    """The checkpoint that `what` (a run, or a LoRA checkpoint) was fine-tuned from, as recorded.

    It is read from the recorded folder if that is still there, else from its source (a hub id
    is found in the HF cache). Weights whose sha256 differs from the recorded one are refused
    in one line: another base would not be the same model (a LoRA adapter only means something
    on top of the exact weights it was trained on).
    """
    if not source or not weights_sha256:
        raise ShoshinError(
            f"{what} does not record which checkpoint it fine-tuned (source and weights_sha256)"
        )
    where = path if path and Path(path).is_dir() else source
    try:
        base = load_checkpoint(where)
    except ShoshinError as exc:
        raise ShoshinError(f"the base model of {what}, {source}, cannot be loaded: {exc}") from None
    if base.weights_sha256 != weights_sha256:
        raise ShoshinError(
            f"the weights of {source}, the base model of {what}, changed since it was fine-tuned "
            f"(sha256 {weights_sha256[:12]}..., now {base.weights_sha256[:12]}...)"
        )
    base.source = source
    return base
