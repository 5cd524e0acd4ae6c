"""Bodies of the routes that do not generate: the model list, health, and vLLM's tokenizer routes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shoshin.serving.schemas import ChatMessage
from shoshin.serving.wire import Bool, Request, TokenId


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "shoshin"
    context_window: int | None = Field(
        None, description="shoshin extension: tokens per request (null: no limit, e.g. an LSTM)"
    )
    max_model_len: int | None = Field(None, description="the same, as vLLM names it")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeRequest(Request):
    """vLLM's /tokenize: a text prompt (special-token names in it become their ids, as in vLLM), or
    chat messages rendered with the model's chat template; exactly one of the two."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {
                    "required": ["prompt"],
                    "properties": {"prompt": {"type": "string"}, "messages": {"type": "null"}},
                },
                {
                    "required": ["messages"],
                    "properties": {"messages": {"type": "array"}, "prompt": {"type": "null"}},
                },
            ]
        }
    )

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: Bool | None = True
    add_special_tokens: Bool | None = True


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int | None
    tokens: list[int]


class TokenizerInfo(BaseModel):
    """vLLM's /tokenizer_info: the special tokens a client needs to build prompts itself (the
    lm-evaluation-harness probes it for `tokenizer_backend=remote`)."""

    tokenizer_class: str
    bos_token: str | None = Field(description="what a document starts after (`<|endoftext|>`)")
    eos_token: str | None = Field(
        description="what ends a reply: `<|end|>` for chat models, else `<|endoftext|>`"
    )
    pad_token: str | None = None
    unk_token: str | None = None
    chat_template: str | None = Field(
        None, description="Jinja template of the chat format (chat models only)"
    )
    model_max_length: int | None = Field(description="the context window (null: no limit)")
    vocab_size: int
    special_tokens: dict[str, int] = Field(description="shoshin extension: special token ids")


class DetokenizeRequest(Request):
    model: str | None = None
    tokens: list[TokenId]


class DetokenizeResponse(BaseModel):
    prompt: str


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str
    active: int = Field(description="requests holding a batch slot now")
    queued: int = Field(description="requests waiting for a slot")
    slots: int = Field(description="requests decoded together at most")
    steps: int = Field(description="batched decode steps taken since start")
