"""Request and response bodies of the OpenAI-compatible API (the subset shoshin serves).

Unknown fields are accepted and ignored, as OpenAI clients send many optional ones; fields we
read are typed and bounded, so a bad value is a 400 with the field's name, never a crash.

Sampling fields named like a `SamplingParams` field are copied into it by name (see
`translate.sampling_params`); those marked SETTING also appear in the web page's settings, which are built from
this schema. Adding a sampling option: the field in SamplingParams, its handling in
`sample_next`, and one field here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SEED_RANGE = {"ge": -(2**63), "le": 2**64 - 1}
SETTING = {"x-shoshin-setting": True}  # shown in the web page's settings
MAX_CHOICES = 16  # n, per prompt


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Lenient):
    type: Literal["text"] = "text"
    text: str


class FunctionCall(_Lenient):
    name: str
    arguments: str = Field(..., description="the arguments as JSON text")


class ToolCall(_Lenient):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = Field(
        None, description="the text, or a list of text parts"
    )
    tool_calls: list[ToolCall] | None = Field(None, description="an assistant's calls")
    tool_call_id: str | None = Field(None, description="a tool message: the call it answers")

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Lenient):
    include_usage: bool = False


class _SamplingRequest(_Lenient):
    model: str | None = Field(None, description="the served model's id (see /v1/models); optional")
    max_tokens: int | None = Field(None, ge=1, description="capped by the server's limit")
    temperature: float = Field(
        1.0, ge=0.0, le=2.0, description="0 is greedy", json_schema_extra=SETTING
    )
    top_p: float = Field(
        1.0, ge=0.0, le=1.0, description="nucleus sampling; 0 is greedy", json_schema_extra=SETTING
    )
    top_k: int | None = Field(
        None,
        ge=-1,
        description="shoshin/vLLM extension; 0, -1 or null: off",
        json_schema_extra=SETTING,
    )
    min_p: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="drop tokens less likely than min_p x the most likely one (vLLM extension)",
        json_schema_extra=SETTING,
    )
    frequency_penalty: float = Field(
        0.0,
        ge=-2.0,
        le=2.0,
        description="lower a token's logit by this x its count in the reply so far",
        json_schema_extra=SETTING,
    )
    presence_penalty: float = Field(
        0.0,
        ge=-2.0,
        le=2.0,
        description="lower the logit of every token already in the reply by this",
        json_schema_extra=SETTING,
    )
    repetition_penalty: float = Field(
        1.0,
        gt=0.0,
        le=10.0,
        description="CTRL's multiplicative penalty on tokens in prompt or reply (vLLM extension); 1 is off",
        json_schema_extra=SETTING,
    )
    logit_bias: dict[str, float] | None = Field(
        None,
        description="token id -> bias in [-100, 100] added to its logit",
        json_schema_extra=SETTING,
    )
    seed: int | None = Field(None, **SEED_RANGE, description="same seed, same reply")
    stop: str | list[str] | None = Field(
        None, description="up to 4 strings that end the reply (not included)"
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(
        1, ge=1, le=MAX_CHOICES, description="choices per prompt; choice i is seeded with seed + i"
    )

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


class JsonSchemaFormat(_Lenient):
    name: str = Field("response", max_length=64)
    description: str | None = None
    schema_: dict = Field(default_factory=dict, alias="schema", description="a JSON Schema")
    strict: bool | None = Field(None, description="shoshin always enforces the schema")


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class FunctionDefinition(_Lenient):
    name: str = Field(..., pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict | None = Field(None, description="a JSON Schema of the arguments object")
    strict: bool | None = None


class Tool(_Lenient):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(_Lenient):
    name: str


class NamedToolChoice(_Lenient):
    type: Literal["function"] = "function"
    function: NamedFunction


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(..., min_length=1)
    response_format: ResponseFormat | None = Field(
        None, description="json_object or json_schema: the reply is generated to parse (validate)"
    )
    tools: list[Tool] | None = Field(None, description="functions the model may call")
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None, description='"auto" when tools are given; "required" or a named one forces a call'
    )
    parallel_tool_calls: bool = Field(True, description="allow more than one call per reply")
    max_completion_tokens: int | None = Field(None, ge=1, description="newer name of max_tokens")
    logprobs: bool = Field(False, description="return the log-probability of each reply token")
    top_logprobs: int | None = Field(
        None, ge=0, le=20, description="with logprobs: this many most likely tokens per position"
    )


class CompletionRequest(_SamplingRequest):
    prompt: str | list[int] | list[str] | list[list[int]] = Field(
        ..., description="text to continue, token ids, or a list of either (one choice each)"
    )
    max_tokens: int | None = Field(
        16, ge=0, description="capped by the server's limit; 0 with echo scores the prompt"
    )
    echo: bool = Field(False, description="return the prompt before the completion")
    logprobs: int | None = Field(
        None, ge=0, le=20, description="log-probabilities of each token and this many alternatives"
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]
    refusal: None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: ChatLogprobs | None = None


class Trimmed(BaseModel):
    """Set when the conversation outgrew the context window and its oldest turns were dropped."""

    dropped_messages: int = Field(
        description="turns left out, oldest first; the system prompt stays"
    )


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    shoshin: Trimmed | None = Field(None, description="shoshin extension: what was trimmed")


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy format: one entry per token (with echo, the prompt's first; its first
    token has no log-probability)."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


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


class TokenizeRequest(_Lenient):
    """vLLM's /tokenize: a text prompt (special-token names in it become their ids, as in vLLM), or
    chat messages rendered with the model's chat template."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: bool = True
    add_special_tokens: bool = True


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


class DetokenizeRequest(_Lenient):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str
    active: int = Field(description="requests holding a batch slot now")
    queued: int = Field(description="requests waiting for a slot")
    slots: int = Field(description="requests decoded together at most")
    steps: int = Field(description="batched decode steps taken since start")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
