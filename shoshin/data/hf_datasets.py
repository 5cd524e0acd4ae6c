"""`data.source=hf:...`: a corpus read through the Hugging Face `datasets` library.

- `hf:NAME` or `hf:NAME:CONFIG`: a dataset on the hub (or already in the local HF cache), e.g.
  `hf:roneneldan/TinyStories` or `hf:Salesforce/wikitext:wikitext-2-raw-v1`;
- `hf:/path`, `hf:./path`, `hf:~/path` (or any existing path): a folder written by
  `Dataset.save_to_disk` / `DatasetDict.save_to_disk`, or a folder (or file) of JSON, JSON Lines,
  Parquet, CSV or text data files, which `datasets` reads as it would on the hub.

One split (`data.hf_split`, slices such as `train[:10%]` allowed except for save_to_disk folders)
and one column (`data.hf_column`) become the documents: a string column gives text documents, a
`messages` column in the OpenAI format (a list of `{"role", "content"}`) gives conversations.
Without `data.hf_column` the column is detected: `messages`, else `text`, else the only string
column.

The corpus hash covers the documents read (so the tokenized-data cache and `shoshin reproduce`
notice any change of content), and `Corpus.origin` records the dataset's own identity: name,
config, split, column, the hub revision (commit) it was read at and the `datasets` fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from shoshin.errors import ShoshinError

# Data-file suffixes -> the `datasets` builder that reads them (for a single file).
FILE_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".txt": "text",
    ".arrow": "arrow",
}


def is_local(name: str) -> bool:
    """`hf:` names that are paths: explicit ones (/, ., ~) and anything that exists on disk."""
    return name.startswith(("/", ".", "~")) or Path(name).exists()


def load_hf_rows(source: str, split: str, column: str, revision: str) -> tuple[str, list, dict]:
    """(kind, raw values of the chosen column, origin record) of the `hf:` source `source`.

    kind is "text" (values are strings) or "chat" (values are lists of message dicts); the values
    are not validated here (shoshin.data.sources does that, as for every source).
    """
    try:
        import datasets
        from datasets.exceptions import DatasetNotFoundError
    except ImportError:
        raise ShoshinError(
            f"data.source={source} needs the Hugging Face datasets library: "
            "pip install 'shoshin[datasets]'"
        ) from None
    name = source.removeprefix("hf:")
    if not name:
        raise ShoshinError(
            "data.source=hf: needs a dataset: hf:NAME, hf:NAME:CONFIG or hf:/path/to/folder"
        )
    origin: dict[str, Any] = {"split": split}
    try:
        if is_local(name):
            if revision:
                raise ShoshinError(
                    f"data.hf_revision applies to hub datasets, not to the folder {name}"
                )
            # Absolute: load_dataset("csv") would be its csv builder reading the current folder.
            path = Path(name).expanduser().resolve()
            dataset = _load_local(datasets, path, split, source)
            origin["path"] = str(path)
        else:
            repo, _, config = name.partition(":")
            builder = datasets.load_dataset_builder(repo, config or None, revision=revision or None)
            builder.download_and_prepare()
            dataset = builder.as_dataset(split=split)
            origin.update(
                name=repo,
                config=builder.config.name,
                revision=builder.hash,  # the hub commit the files were read at
            )
    except ShoshinError:
        raise
    except ConnectionError:
        raise ShoshinError(
            f"data.source={source}: the Hugging Face hub cannot be reached (offline, or "
            "HF_HUB_OFFLINE=1) and this dataset is not in the local cache; load it once with "
            "network access, or save it to a folder and use hf:/path/to/folder"
        ) from None
    except DatasetNotFoundError:
        raise ShoshinError(
            f"data.source={source}: no such dataset on the Hugging Face hub (check the name; "
            "a gated or private dataset needs `hf auth login`)"
        ) from None
    except FileNotFoundError:
        raise ShoshinError(
            f"data.source={source}: no data files that datasets can read there "
            "(JSON, JSON Lines, Parquet, CSV or text files, or a save_to_disk folder)"
        ) from None
    except Exception as exc:  # datasets' own errors: a bad config or split name, malformed files
        reason = _first_line(exc)
        if exc.__cause__ is not None:  # "An error occurred while generating the dataset": why
            reason += f" ({_first_line(exc.__cause__)})"
        raise ShoshinError(f"data.source={source}: {reason}") from None

    column = _choose_column(dataset, column, source)
    kind = _column_kind(dataset, column)
    if kind is None:
        raise ShoshinError(
            f"data.source={source}: column {column!r} holds neither text (strings) nor "
            'messages (a list of {"role", "content"})'
        )
    origin.update(column=column, rows=dataset.num_rows, fingerprint=dataset._fingerprint)
    values = dataset.select_columns([column]).to_dict()[column]
    return kind, values, origin


def _load_local(datasets, path: Path, split: str, source: str):
    """A save_to_disk folder (one Dataset, or one split of a DatasetDict) or data files."""
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        loaded = datasets.load_from_disk(str(path))
        if not isinstance(loaded, datasets.DatasetDict):
            # A single saved Dataset is read whole: it is the default split, or the one it was.
            if split not in ("train", str(loaded.split)):
                raise ShoshinError(
                    f"data.source={source} is a single Dataset without splits; "
                    f"data.hf_split={split} does not apply (leave it at train)"
                )
            return loaded
        if "[" in split:
            raise ShoshinError(
                f"data.source={source}: slices such as {split!r} work for hub datasets and data "
                "files; for a save_to_disk folder give a split name (and data.max_documents)"
            )
        if split not in loaded:
            raise ShoshinError(
                f"data.source={source} has no split {split!r}; set data.hf_split to one of "
                f"{', '.join(loaded)}"
            )
        return loaded[split]
    if path.is_file():
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ShoshinError(
                f"data.source={source}: {path.suffix or 'this'} files are not a datasets format "
                f"(use one of {', '.join(FILE_BUILDERS)})"
            )
        return datasets.load_dataset(builder, data_files=str(path), split=split)
    if not path.exists():
        raise ShoshinError(f"data.source={source}: {path} does not exist")
    return datasets.load_dataset(str(path), split=split)


def _choose_column(dataset, column: str, source: str) -> str:
    names = list(dataset.column_names)
    if column:
        if column not in names:
            raise ShoshinError(
                f"data.source={source} has no column {column!r} (data.hf_column); "
                f"its columns: {', '.join(names)}"
            )
        return column
    for preferred in ("messages", "text"):
        if preferred in names:
            return preferred
    strings = [n for n in names if _column_kind(dataset, n) == "text"]
    if len(strings) == 1:
        return strings[0]
    raise ShoshinError(
        f"data.source={source}: cannot tell which column to train on (no 'messages' or 'text' "
        f"column); set data.hf_column to one of {', '.join(names)}"
    )


def _column_kind(dataset, column: str) -> str | None:
    """ "text" for a string column, "chat" for a list of {role, content} structs, else None."""
    import pyarrow as pa

    kind = dataset.features.arrow_schema.field(column).type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "text"
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        item = kind.value_type
        if pa.types.is_struct(item) and {"role", "content"} <= {f.name for f in item}:
            return "chat"
    return None


def documents_sha256(kind: str, documents: list) -> str:
    """A hash of the documents themselves: what the run trains on, however it was stored."""
    digest = hashlib.sha256(kind.encode() + b"\0")
    for doc in documents:
        data = doc if kind == "text" else json.dumps(doc, sort_keys=True, ensure_ascii=False)
        digest.update(data.encode("utf-8") + b"\0")
    return digest.hexdigest()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:300] if text else "") or type(exc).__name__
