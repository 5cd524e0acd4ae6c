"""Request and response bodies of OpenAI's Responses API (`/v1/responses`), the subset served.

Text input or a list of input messages, `instructions`, `max_output_tokens`, `temperature` and
`top_p` (generated from SamplingParams, as in schemas.py), structured output through
`text.format` (json_object, json_schema), streaming. Responses are not stored:
`store` is accepted and has no effect, and `previous_response_id` is a 400 (see UNSUPPORTED).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, create_model, field_validator

from shoshin.serving.wire import (
    RESPONSES_UNSUPPORTED,
    Bool,
    Int,
    Lenient,
    Request,
    reject_unsupported,
    sampling_fields,
    unsupported_fields,
)


class InputText(Lenient):
    type: Literal["input_text", "output_text"] = Field(
        description="input_text, or output_text in an assistant message sent back"
    )
    text: str


class InputMessage(Lenient):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputText]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class PlainTextFormat(Lenient):
    type: Literal["text"]


class JsonObjectFormat(Lenient):
    type: Literal["json_object"]


class JsonSchemaTextFormat(Lenient):
    type: Literal["json_schema"]
    name: str = Field("response", max_length=64)
    schema_: dict = Field(..., alias="schema", description="the JSON Schema replies match")
    strict: Bool | None = Field(None, description="shoshin always enforces the schema")


TextFormat = Annotated[
    PlainTextFormat | JsonObjectFormat | JsonSchemaTextFormat, Field(discriminator="type")
]


class TextConfig(Request):
    format: TextFormat | None = None


class ResponseRequest(
    create_model(
        "_ResponseBase",
        __base__=Request,
        **sampling_fields(["temperature", "top_p"]),
        **unsupported_fields(RESPONSES_UNSUPPORTED),
    )
):
    model: str | None = Field(None, description="the served model's id (see /v1/models); optional")
    input: str | list[InputMessage] = Field(
        description="the user's text, or the conversation as a list of messages"
    )
    instructions: str | None = Field(None, description="a system message put before the input")
    max_output_tokens: Int(ge=1) | None = Field(None, description="capped by the server's limit")
    stream: Bool | None = False
    store: Bool | None = Field(True, description="accepted; shoshin never stores responses")
    text: TextConfig | None = None

    _unsupported = field_validator(*RESPONSES_UNSUPPORTED, mode="before")(reject_unsupported)


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list = []
    logprobs: list = []


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[OutputText]


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = InputTokensDetails()
    output_tokens: int
    output_tokens_details: OutputTokensDetails = OutputTokensDetails()
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseError(BaseModel):
    code: str
    message: str


class Response(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    model: str
    output: list[OutputMessage]
    incomplete_details: IncompleteDetails | None = None
    error: ResponseError | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    parallel_tool_calls: bool = False
    tool_choice: Literal["none"] = "none"
    tools: list = []
    text: dict = {"format": {"type": "text"}}
    store: bool = False
    usage: ResponseUsage | None = None
