"""How outputs write a file's path: text that every format can hold and that reads back to the file.

A path is written as it is, unless its name is not valid UTF-8 (Linux allows any bytes; Python
reads such a name as text with a lone surrogate U+DC80..U+DCFF per undecodable byte, PEP 383).
Each such byte is then written as the six characters ``\\udcNN`` (the JSON spelling of that
surrogate), which UTF-8 files, CSV cells, Parquet strings and SQLite text can all hold;
``path_from_text`` turns the text back into the path that opens the file. (A name that literally
contains such a six-character sequence reads back as the byte: no real file is named like that.)

The plain ``path<TAB>caption`` lines and the error log also escape tab, newline and carriage
return as ``\\t``, ``\\n``, ``\\r`` (``line_path``), so one image is always one line.
"""

from __future__ import annotations

import re

_SURROGATE = re.compile("[\udc80-\udcff]")
_ESCAPED = re.compile(r"\\u(dc[89a-f][0-9a-f])")
_CONTROL = str.maketrans({"\t": "\\t", "\n": "\\n", "\r": "\\r"})


def path_text(path: str) -> str:
    """``path`` as outputs record it (see the module docstring)."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", path)


def path_from_text(text: str) -> str:
    """The path that ``path_text`` wrote as ``text``."""
    return _ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), text) if "\\u" in text else text


def line_path(path: str) -> str:
    """``path`` for a line of text: path_text, with tab, newline and carriage return escaped."""
    return path_text(path).translate(_CONTROL)
