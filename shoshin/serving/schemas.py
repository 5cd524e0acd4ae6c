"""Request and response bodies of the OpenAI-compatible API (the subset shoshin serves).

Requests: an explicit `null` means the field's default, as OpenAI's API declares its optional
fields nullable; fields no one here reads are ignored, as OpenAI clients send many optional ones;
fields OpenAI defines that shoshin does not serve (`UNSUPPORTED`) are a 400 naming them, never
silently ignored. Fields we read are typed and bounded, so a bad value is a 400 with the field's
name, never a crash.

The sampling fields are generated from `SamplingParams` (shoshin/generation/params.py), the one
declaration of each option's type, default, bounds and description (see wire.py). Options declared
`setting=True` are marked `x-shoshin-setting` and appear in the web page's settings, which are
built from /openapi.json.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from shoshin.generation.params import MAX_LOGPROBS
from shoshin.serving.wire import (
    CHAT_UNSUPPORTED,
    COMPLETION_UNSUPPORTED,
    Bool,
    Int,
    Lenient,
    Request,
    TokenIds,
    reject_unsupported,
    sampling_fields,
    unsupported_fields,
)

MAX_CHOICES = 16  # n, per prompt
MAX_STOP_STRINGS = 4


class TextPart(Lenient):
    type: Literal["text"] = "text"
    text: str


class FunctionCall(Lenient):
    name: str
    arguments: str = Field(..., description="the arguments as JSON text")


class ToolCall(Lenient):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(Lenient):
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


class StreamOptions(Request):
    include_usage: Bool | None = False


class _Common(Request):
    model: str | None = Field(None, description="the served model's id (see /v1/models); optional")
    max_tokens: Int(ge=1) | None = Field(None, description="capped by the server's limit")
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_STRINGS)] | None = Field(
        None, description=f"up to {MAX_STOP_STRINGS} strings that end the reply (not included)"
    )
    stream: Bool | None = False
    stream_options: StreamOptions | None = None
    n: Int(ge=1, le=MAX_CHOICES) | None = Field(
        1, description="choices per prompt; choice i is seeded with seed + i"
    )

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


_SamplingRequest = create_model("_SamplingRequest", __base__=_Common, **sampling_fields())


class JsonSchemaFormat(Lenient):
    name: str = Field("response", max_length=64)
    description: str | None = None
    schema_: dict = Field(..., alias="schema", description="a JSON Schema")
    strict: Bool | None = Field(None, description="shoshin always enforces the schema")


class TextResponse(Lenient):
    type: Literal["text"]


class JsonObjectResponse(Lenient):
    type: Literal["json_object"]


class JsonSchemaResponse(Lenient):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[
    TextResponse | JsonObjectResponse | JsonSchemaResponse, Field(discriminator="type")
]


class FunctionDefinition(Lenient):
    name: str = Field(..., pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict | None = Field(None, description="a JSON Schema of the arguments object")
    strict: Bool | None = None


class Tool(Lenient):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(Lenient):
    name: str


class NamedToolChoice(Lenient):
    type: Literal["function"] = "function"
    function: NamedFunction


class ChatCompletionRequest(
    create_model("_ChatBase", __base__=_SamplingRequest, **unsupported_fields(CHAT_UNSUPPORTED))
):
    # "required" or a named tool_choice needs tools (the named one among them: no JSON Schema
    # can say that part, so it is only in the description)
    model_config = ConfigDict(
        json_schema_extra={
            "if": {
                "properties": {
                    "tool_choice": {"anyOf": [{"const": "required"}, {"type": "object"}]}
                },
                "required": ["tool_choice"],
            },
            "then": {"properties": {"tools": {"type": "array"}}, "required": ["tools"]},
        }
    )
    messages: list[ChatMessage] = Field(..., min_length=1)
    response_format: ResponseFormat | None = Field(
        None, description="json_object or json_schema: the reply is generated to parse (validate)"
    )
    tools: Annotated[list[Tool], Field(min_length=1)] | None = Field(
        None, description="functions the model may call"
    )
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None,
        description='"auto" when tools are given; "required" or a named one (which must be '
        "among the tools) forces a call",
    )
    parallel_tool_calls: Bool | None = Field(True, description="allow more than one call per reply")
    max_completion_tokens: Int(ge=1) | None = Field(None, description="newer name of max_tokens")
    logprobs: Bool | None = Field(
        False, description="return the log-probability of each reply token"
    )
    top_logprobs: Int(ge=0, le=MAX_LOGPROBS) | None = Field(
        None, description="with logprobs: this many most likely tokens per position"
    )

    _unsupported = field_validator(*CHAT_UNSUPPORTED, mode="before")(reject_unsupported)


class CompletionRequest(
    create_model(
        "_CompletionBase", __base__=_SamplingRequest, **unsupported_fields(COMPLETION_UNSUPPORTED)
    )
):
    prompt: (
        str
        | TokenIds
        | Annotated[list[str], Field(min_length=1)]
        | Annotated[list[TokenIds], Field(min_length=1)]
    ) = Field(..., description="text to continue, token ids, or a list of either (one choice each)")
    max_tokens: Int(ge=0) | None = Field(
        16, description="capped by the server's limit; 0 with echo scores the prompt"
    )
    echo: Bool | None = Field(False, description="return the prompt before the completion")
    logprobs: Int(ge=0, le=MAX_LOGPROBS) | None = Field(
        None, description="log-probabilities of each token and this many alternatives"
    )

    _unsupported = field_validator(*COMPLETION_UNSUPPORTED, mode="before")(reject_unsupported)


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


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
