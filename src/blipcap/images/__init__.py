"""Images in, model pixels out: every image decode in blipcap goes through here.

    errors.py  ImageError and its subclasses: the per-item refusals, each naming its input
    load.py    every input kind (path, URL, bytes, file object, PIL image, array, tensor) -> an
               EXIF-upright RGB PIL image (load_image); header size guard, draft-mode JPEG
    fetch.py   the one SSRF-safe URL fetcher (UrlFetcher), for the library and the service alike
    pixels.py  RGB -> float32 model input (Preprocessor); the rules for non-8-bit pixel values
    formats.py HEIC/HEIF, AVIF and camera RAW: recognised by their bytes, decoded by optional extras
               (pillow-heif, rawpy) registered on first use; MissingDecoderError without them
    decode.py  a file, bytes or URL read once -> a model-ready Decoded (image, sha256, stored size),
               for the folder job, the Ray job and the service (Decoder)

numpy and Pillow only: a torch-free install works.
"""

from .decode import Decoder, read_file, sha256
from .errors import (
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    NotAnImageError,
    TruncatedImageError,
    UnreadableImageError,
)
from .fetch import UrlFetcher, UrlRefused
from .formats import MissingDecoderError
from .load import DEFAULT_MAX_PIXELS, image_list, load_image
from .pixels import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Decoded, Preprocessor

__all__ = [
    "DEFAULT_MAX_PIXELS", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "Decoded", "Decoder", "EmptyImageError",
    "ImageError", "ImageTooLargeError", "MissingDecoderError", "NotAnImageError", "Preprocessor",
    "TruncatedImageError", "UnreadableImageError", "UrlFetcher", "UrlRefused", "image_list", "load_image",
    "read_file", "sha256",
]
