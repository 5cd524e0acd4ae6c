"""Read a corpus into documents: plain-text documents, or chat conversations (lists of messages).

Sources: a `.txt` file (one document), a folder of `.txt` files (one document each), a `.jsonl`
chat file in the OpenAI messages format, `chitchat` (the built-in human conversation corpus), or
`hf:...`, a Hugging Face dataset (see shoshin.data.hf_datasets).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoshin.data.chat import plain_messages
from shoshin.data.text import BOM, clean_text, decode_utf8
from shoshin.errors import ShoshinError

ROLES = ("system", "user", "assistant", "tool")

Message = dict[str, str]
Conversation = list[Message]


@dataclass
class Corpus:
    kind: str  # "text" or "chat"
    documents: list  # list[str] for text, list[Conversation] for chat
    sha256: str  # hash of the source bytes (of the documents read, for hf: datasets)
    description: str
    origin: dict[str, Any] | None = None  # hf: datasets: name, split, column, revision, fingerprint


def load_corpus(
    source: str,
    max_documents: int = 0,
    hf_split: str = "train",
    hf_column: str = "",
    hf_revision: str = "",
) -> Corpus:
    """Load a corpus by name or path; every user mistake becomes a one-line ShoshinError.

    hf_split, hf_column and hf_revision choose what an `hf:` source reads (data.hf_* keys).
    """
    if source == "chitchat":
        corpus = _load_chitchat()
    elif source.startswith("hf:"):
        corpus = _load_hf(source, hf_split, hf_column, hf_revision)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise ShoshinError(
                f"data source {source} does not exist (give a .txt file, a folder, a .jsonl chat "
                "file, chitchat, or a Hugging Face dataset as hf:NAME or hf:/path)"
            )
        if path.is_dir():
            corpus = _load_text_folder(path)
        elif path.suffix == ".jsonl":
            corpus = _load_chat_jsonl(path)
        else:
            corpus = _load_text_file(path)
    if max_documents:
        corpus.documents = corpus.documents[:max_documents]
    if not corpus.documents:
        raise ShoshinError(f"corpus {corpus.description} is empty")
    return corpus


def _read_text(path: Path) -> tuple[str, bytes]:
    """A source file's text (a leading byte-order mark skipped) and its bytes."""
    data = path.read_bytes()
    if b"\x00" in data:
        raise ShoshinError(f"{path} looks like a binary file, not UTF-8 text")
    return decode_utf8(data, path), data


def _load_text_file(path: Path) -> Corpus:
    text, data = _read_text(path)
    if not text.strip():
        raise ShoshinError(f"corpus {path} is empty")
    return Corpus("text", [text], hashlib.sha256(data).hexdigest(), str(path))


def _load_text_folder(folder: Path) -> Corpus:
    files = sorted(p for p in folder.rglob("*.txt") if p.is_file())
    if not files:
        raise ShoshinError(f"corpus folder {folder} has no .txt files")
    digest = hashlib.sha256()
    documents = []
    for path in files:
        text, data = _read_text(path)
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + data + b"\0")
        if text.strip():
            documents.append(text)
    if not documents:
        raise ShoshinError(f"corpus folder {folder} is empty (all .txt files are blank)")
    return Corpus("text", documents, digest.hexdigest(), str(folder))


def _load_chat_jsonl(path: Path) -> Corpus:
    text, data = _read_text(path)
    conversations = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ShoshinError(f"{where}: malformed JSON ({exc.msg})") from None
        messages = record.get("messages") if isinstance(record, dict) else None
        tools = record.get("tools") if isinstance(record, dict) else None
        conversations.append(_conversation(messages, where, tools))
    if not conversations:
        raise ShoshinError(f"corpus {path} is empty")
    return Corpus("chat", conversations, hashlib.sha256(data).hexdigest(), str(path))


def _conversation(messages: Any, where: str, tools: Any = None) -> Conversation:
    """A checked list of OpenAI-format messages as role and content, tool calls, tool results and
    the tools on offer rendered into the content (shoshin.data.chat.plain_messages)."""
    if not isinstance(messages, list) or not messages:
        raise ShoshinError(
            f'{where}: expected {{"messages": [{{"role": ..., "content": ...}}, ...]}}'
        )
    if tools is not None and not (isinstance(tools, list) and all(_is_tool(t) for t in tools)):
        raise ShoshinError(
            f'{where}: "tools" must be a list of {{"type": "function", "function": {{"name": ...}}}}'
        )
    conversation = []
    for message in messages:
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        if not isinstance(message, dict) or not (
            isinstance(message.get("content"), str) or (calls and message.get("content") is None)
        ):
            raise ShoshinError(f"{where}: each message needs a string 'content'")
        role = message.get("role")
        if role not in ROLES:
            raise ShoshinError(
                f"{where}: unknown role {role!r} (expected one of {', '.join(ROLES)})"
            )
        if calls is not None and (role != "assistant" or not _are_calls(calls)):
            raise ShoshinError(
                f"{where}: tool_calls belong to assistant messages, each "
                '{"function": {"name": ..., "arguments": "JSON text"}}'
            )
        # JSON may escape a lone surrogate ("\ud800"), which is no character: U+FFFD stands in.
        content = clean_text(message.get("content") or "")
        conversation.append(
            {"role": role, "content": content, **({"tool_calls": calls} if calls else {})}
        )
    return plain_messages(conversation, tools)


def _is_tool(tool: Any) -> bool:
    function = tool.get("function") if isinstance(tool, dict) else None
    return isinstance(function, dict) and isinstance(function.get("name"), str)


def _are_calls(calls: Any) -> bool:
    return isinstance(calls, list) and all(
        _is_tool(c) and isinstance(c["function"].get("arguments"), (str, dict)) for c in calls
    )


def _load_hf(source: str, split: str, column: str, revision: str) -> Corpus:
    """A Hugging Face dataset: one column of one split, as text documents or conversations."""
    from shoshin.data.hf_datasets import documents_sha256, load_hf_rows

    kind, values, origin = load_hf_rows(source, split, column, revision)
    documents: list = []
    for row, value in enumerate(values):
        where = f"{source} ({origin['split']}, row {row})"
        if kind == "chat":
            documents.append(_conversation(value, where))
        elif not isinstance(value, str):
            raise ShoshinError(f"{where}: column {origin['column']!r} is empty (null)")
        elif (text := value.removeprefix(BOM)).strip():  # Arrow strings hold no surrogates
            documents.append(text)
    return Corpus(kind, documents, documents_sha256(kind, documents), source, origin)


def _load_chitchat() -> Corpus:
    """The chitchat-dataset package: 7,168 human conversations between two people.

    Its conversations are already grouped into turns (consecutive messages of one sender); the
    messages of a turn are joined with newlines and the turns alternate user / assistant.
    Conversations in which only one person spoke (3,151 of the 7,168) teach no dialogue and are
    skipped, leaving 4,017.
    """
    try:
        import chitchat_dataset
    except ImportError:
        raise ShoshinError(
            "the chitchat corpus needs the chitchat-dataset package: pip install chitchat-dataset"
        ) from None
    path = Path(chitchat_dataset.__file__).parent / "dataset.json"
    data = path.read_bytes()
    raw = json.loads(data)
    conversations = []
    for key in sorted(raw):
        turns = [
            "\n".join(m["text"].strip() for m in turn if m["text"].strip())
            for turn in raw[key]["messages"]
        ]
        turns = [t for t in turns if t]
        if len(turns) < 2:
            continue
        conversations.append(
            [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]
        )
    return Corpus("chat", conversations, hashlib.sha256(data).hexdigest(), "chitchat")
