"""Request and response bodies of the OpenAI-compatible API (the subset shoshin serves).

Unknown fields are accepted and ignored, as OpenAI clients send many optional ones; fields we
read are typed and bounded, so a bad value is a 400 with the field's name, never a crash.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SEED_RANGE = {"ge": -(2**63), "le": 2**64 - 1}


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Lenient):
    type: Literal["text"] = "text"
    text: str


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = Field(
        None, description="the text, or a list of text parts"
    )

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
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 is greedy")
    top_p: float = Field(1.0, ge=0.0, le=1.0, description="nucleus sampling; 0 is greedy")
    top_k: int | None = Field(None, ge=0, description="shoshin extension; 0 or null: off")
    seed: int | None = Field(None, **SEED_RANGE, description="same seed, same reply")
    stop: str | list[str] | None = Field(
        None, description="up to 4 strings that end the reply (not included)"
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = Field(1, description="only one choice per request is supported")

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="newer name of max_tokens")


class CompletionRequest(_SamplingRequest):
    prompt: str = Field(..., description="text to continue")
    max_tokens: int | None = Field(16, ge=1, description="capped by the server's limit")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


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


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str
    logprobs: None = None


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
    context_window: int | None = Field(None, description="shoshin extension: tokens per request")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


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
