"""The per-item errors for inputs that are not usable images: ``str(e)`` is ``"<input>: <reason>"``."""

from __future__ import annotations


class ImageError(ValueError):
    """An input that cannot be used as an image. ``str(e)`` is ``"<input>: <reason>"``."""

    def __init__(self, source: str, reason: str):
        reason = " ".join(reason.split())  # one line, whatever a decoder put in its message
        super().__init__(f"{source}: {reason}")
        self.source = source  # the input, as named in the message
        self.reason = reason

    def __reduce__(self):  # survive pickling to and from worker processes
        return type(self), (self.source, self.reason)


class UnreadableImageError(ImageError):
    """Missing path, no permission, a directory, I/O error, failed URL fetch, unsupported input."""


class EmptyImageError(ImageError):
    """Zero bytes, a zero-size array, or an image with no pixels."""


class NotAnImageError(ImageError):
    """Bytes that Pillow does not recognise as any image format."""


class TruncatedImageError(ImageError):
    """A recognised format whose data is cut short or corrupt."""


class ImageTooLargeError(ImageError):
    """Over ``max_pixels`` pixels (judged from the header), or a URL body over ``max_url_bytes``."""
