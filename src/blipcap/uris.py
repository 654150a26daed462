"""What kind of location a string names: a URI with a scheme (s3://, gs://, file://, http://...),
an http(s) URL, or else a local path. The one place these tests are spelled."""

from __future__ import annotations


def has_scheme(item: str) -> bool:
    """``scheme://...`` with a scheme of two or more letters (a Windows drive ``C:\\`` is not one)."""
    head, sep, _ = item.partition("://")
    return bool(sep) and head.isascii() and head.replace("+", "").isalnum() and len(head) > 1


def is_http_url(item: str) -> bool:
    return item[:8].lower().startswith(("http://", "https://"))
