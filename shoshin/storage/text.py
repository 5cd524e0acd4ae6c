"""Text at the edges: what shoshin does with surrogates, invalid bytes and byte-order marks.

Text reaches shoshin from files, the command line, the terminal and HTTP requests, and not all of
it is valid Unicode. The rules, applied where text becomes token ids and where files are read:

- A lone surrogate (e.g. `"\\ud800"` in a JSON request) and a byte that was not valid UTF-8 (Python
  keeps one as a surrogate escape such as `"\\udcff"` in `sys.argv` and on stdin) become U+FFFD, the
  replacement character, as a UTF-8 decoder with `errors="replace"` would make of them. The byte
  itself is not kept: text is Unicode, and a model trained on UTF-8 text has no use for it.
- A surrogate pair left as two code points becomes the one character it encodes.
- A UTF-8 byte-order mark at the start of a file (every Windows editor writes one) is skipped; so
  is one at the start of a text row of an `hf:` dataset (the `datasets` text and CSV readers keep a
  file's mark in its first row).
"""

from __future__ import annotations

import codecs
from pathlib import Path

from shoshin.errors import ShoshinError

REPLACEMENT = "\ufffd"
BOM = "\ufeff"  # the byte-order mark, once decoded


def clean_text(text: str) -> str:
    """`text` with each lone or escaped surrogate made U+FFFD (valid text is returned as is)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        # UTF-16 with surrogatepass writes each surrogate as the code unit it is; decoding that
        # joins valid pairs into one character and replaces every unpaired unit by U+FFFD.
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def decode_utf8(data: bytes, where: str | Path) -> str:
    """A UTF-8 file's text, without a leading byte-order mark; a one-line error if invalid."""
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ShoshinError(
            f"{where} is not valid UTF-8 text (bad byte at offset {skip + exc.start})"
        ) from None


def read_text_file(path: Path) -> str:
    """The text of a UTF-8 file (a config, a JSON record), read as `decode_utf8` says."""
    return decode_utf8(Path(path).read_bytes(), path)
