"""The routes that do not generate: the chat page, health, the model list, and vLLM's tokenizer
routes (`/tokenize`, `/detokenize`, `/tokenizer_info`) that clients such as the
lm-evaluation-harness use to build prompts themselves."""

from __future__ import annotations

import re
from importlib import resources

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse

from shoshin.data.chat import is_chat_tokenizer
from shoshin.data.tokenizers import END, EOT, CharTokenizer, Tokenizer
from shoshin.serving.errors import ERROR_RESPONSES, APIError
from shoshin.serving.middleware import authorize
from shoshin.serving.route_schemas import (
    DetokenizeRequest,
    DetokenizeResponse,
    Health,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfo,
)
from shoshin.serving.service import CurrentServer, Server
from shoshin.serving.translate import messages

router = APIRouter()  # open to all
api = APIRouter(dependencies=[Depends(authorize)], responses=ERROR_RESPONSES)  # behind the key

PAGE = resources.files("shoshin.serving").joinpath("static/index.html")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def chat_page() -> HTMLResponse:
    return HTMLResponse(PAGE.read_text("utf-8"))


@router.get("/health", response_model=Health)
async def health(server: CurrentServer) -> Health:
    s = server.scheduler
    return Health(
        model=server.model_id, active=s.active, queued=s.queued, slots=s.slots, steps=s.steps
    )


@api.get("/v1/models", response_model=ModelList)
async def list_models(server: CurrentServer) -> ModelList:
    card = ModelCard(
        id=server.model_id,
        created=server.created,
        context_window=server.context,
        max_model_len=server.context,
    )
    return ModelList(data=[card])


@api.post("/tokenize", response_model=TokenizeResponse)
async def tokenize(body: TokenizeRequest, server: CurrentServer) -> TokenizeResponse:
    server.check_model(body.model)
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "send either prompt (text) or messages (a chat)", param="prompt")
    if body.messages is not None:
        ids = server.template.render(messages(body.messages), body.add_generation_prompt)
    else:
        ids = encode_with_special_tokens(server.tokenizer, body.prompt)
    return TokenizeResponse(count=len(ids), max_model_len=server.context, tokens=ids)


@api.get("/tokenizer_info", response_model=TokenizerInfo)
async def get_tokenizer_info(server: CurrentServer) -> TokenizerInfo:
    return tokenizer_info(server)


@api.post("/detokenize", response_model=DetokenizeResponse)
async def detokenize(body: DetokenizeRequest, server: CurrentServer) -> DetokenizeResponse:
    server.check_model(body.model)
    server.check_tokens(body.tokens, "tokens")
    return DetokenizeResponse(prompt=server.tokenizer.decode(body.tokens))


def encode_with_special_tokens(tokenizer: Tokenizer, text: str) -> list[int]:
    """Ids of text in which the names of special tokens (`<|endoftext|>`) stand for those tokens.

    This is what vLLM's /tokenize does (Hugging Face tokenizers split added tokens out of text), and
    what its clients rely on: the lm-evaluation-harness learns the id of the end-of-text token by
    tokenizing its name. Everywhere else text stays text (`Tokenizer.encode`).
    """
    specials = tokenizer.special_tokens
    if not specials:
        return tokenizer.encode(text)
    names = sorted(specials, key=len, reverse=True)  # the longest name wins where two overlap
    ids: list[int] = []
    for i, piece in enumerate(re.split("(" + "|".join(map(re.escape, names)) + ")", text)):
        if i % 2:
            ids.append(specials[piece])
        elif piece:
            ids += tokenizer.encode(piece)
    return ids


def tokenizer_info(server: Server) -> TokenizerInfo:
    """The special tokens and chat template of the served tokenizer, as vLLM's /tokenizer_info.

    They match what `shoshin export` writes for transformers: a document starts after
    `<|endoftext|>` (bos, also the padding), and a chat model's turn ends at `<|end|>` (eos).
    """
    from shoshin.interop.export import CHAT_TEMPLATE

    tok = server.tokenizer
    specials = tok.special_tokens
    chat = is_chat_tokenizer(tok)
    eot = EOT if EOT in specials else None
    return TokenizerInfo(
        tokenizer_class="CharTokenizer" if isinstance(tok, CharTokenizer) else "BpeTokenizer",
        bos_token=eot,
        eos_token=END if chat else eot,
        pad_token=eot,
        unk_token="<unk>" if "<unk>" in specials else None,
        chat_template=CHAT_TEMPLATE if chat else None,
        model_max_length=server.context,
        vocab_size=server.vocab_size,
        special_tokens=dict(specials),
    )
