"""Captions as accessibility alt text (``--alt-text``).

Screen-reader guidance (W3C WAI, and the 125-character rule of thumb most CMSs follow): say what
is in the image, not that it is an image; a sentence; short. So: drop lead-ins such as "a picture
of", "an image of", "there is"; capitalise; end with a period; cut at a word to fit the limit.
Lead-ins that carry meaning ("a painting of", "a drawing of") are kept.
"""

from __future__ import annotations

import re

DEFAULT_MAX_CHARS = 125

_LEAD_IN = re.compile(
    r"^\s*(?:"
    r"(?:an?|the)\s+(?:close[- ]?up\s+)?(?:picture|image|photo|photograph|photography|pic|snapshot)"
    r"(?:\s+(?:of|showing|shows|with))?"
    r"|(?:this|it)\s+is|there\s+(?:is|are)|here\s+(?:is|are)"
    r")\s+",
    re.IGNORECASE,
)


def alt_text(caption: str, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """``caption`` rewritten as alt text: no lead-in, capitalised, one period, at most ``max_chars``."""
    if max_chars < 2:
        raise ValueError(f"alt text needs max_chars >= 2, got {max_chars}")
    text = " ".join(caption.split())
    while (m := _LEAD_IN.match(text)) and m.end() < len(text):  # "there is a picture of a dog"
        text = text[m.end():]
    text = text.rstrip(" .,;:")
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    if len(text) + 1 > max_chars:  # + the period
        cut = text[: max_chars - 1]
        space = cut.rfind(" ") if text[max_chars - 1] != " " else len(cut)  # mid-word: drop the word
        text = (cut[:space] if space > 0 else cut).rstrip(" ,;:")
    return text if text.endswith(("!", "?")) else text + "."
