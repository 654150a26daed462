"""Where a request's images are fetched and decoded, so that no request can hold up the others'.

Three pools of threads, off the event loop: URL fetches (``--allow-urls``) wait on the network in
a pool of their own, never on a decode thread; ordinary images decode on the ``decode_workers``
threads; an image whose header says it is huge (over ``HEAVY_PIXELS``, e.g. a 12 KB PNG of
10,000 x 10,000 pixels, which takes a second or more to inflate) is decoded on one thread of its
own. Ten of those in one request then queue behind each other there, while everyone else's
images keep their threads: a normal request waits for no bomb-sized decode (issue 13). One huge
decode at a time also bounds its memory (a 100-megapixel RGB image is 300 MB), and the C heap
that decode grew is handed back to the OS afterwards (glibc ``malloc_trim``), so a burst of them
does not leave the server holding a gigabyte.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import io
import warnings
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from ..images import Decoded, Decoder, ImageError, UnreadableImageError
from .inputs import Upload, decode

HEAVY_PIXELS = 24_000_000  # a 24-megapixel photo decodes in well under a second; larger go to the heavy lane
FETCH_THREADS = 8  # URL fetches in flight at once (each bounded by --url-timeout-s)


@functools.cache
def _malloc_trim():
    libc = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(libc).malloc_trim if libc else None
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to hand back this way
        trim = None
    return trim


def pixels_in_header(data: bytes) -> int:
    """Width x height as the image's header states them (0 when Pillow cannot tell: decoding will say why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                return im.width * im.height
    except Exception:  # noqa: BLE001 - any unreadable header: the decode reports it properly
        return 0


def _decode_unless_heavy(upload: Upload, decoder: Decoder) -> Decoded | ImageError | None:
    """Decode an ordinary image here; None for a huge one, which goes to the heavy lane."""
    if pixels_in_header(upload.data) > HEAVY_PIXELS:
        return None
    return decode(upload, decoder)


def _decode_heavy(upload: Upload, decoder: Decoder) -> Decoded | ImageError:
    try:
        return decode(upload, decoder)
    finally:
        trim = _malloc_trim()
        if trim is not None:
            trim(0)


class DecodeLanes:
    def __init__(self, decoder: Decoder, decode_workers: int):
        self.decoder = decoder
        self.normal = ThreadPoolExecutor(decode_workers, thread_name_prefix="blipcap-decode")
        self.heavy = ThreadPoolExecutor(1, thread_name_prefix="blipcap-decode-heavy")
        self.fetch = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="blipcap-fetch")

    async def decode(self, upload: Upload) -> Decoded | ImageError:
        loop = asyncio.get_running_loop()
        if upload.error is None and upload.url is not None:
            fetched = await loop.run_in_executor(self.fetch, self._fetch, upload)
            if isinstance(fetched, ImageError):
                return fetched
            upload = fetched
        if upload.data is None:  # refused while parsing: nothing to decode
            return await loop.run_in_executor(self.normal, decode, upload, self.decoder)
        # the header is read on a decode thread too: never parse client bytes on the event loop
        done = await loop.run_in_executor(self.normal, _decode_unless_heavy, upload, self.decoder)
        if done is None:
            return await loop.run_in_executor(self.heavy, _decode_heavy, upload, self.decoder)
        return done

    def _fetch(self, upload: Upload) -> Upload | ImageError:
        """The URL's bytes as an upload named by the URL, or the refusal."""
        if self.decoder.fetcher is None:
            return UnreadableImageError(upload.label, "URL inputs are off on this server (start it with --allow-urls)")
        try:
            return Upload(upload.label, data=self.decoder.fetcher.fetch(upload.url))
        except ImageError as e:
            return type(e)(upload.label, e.reason)
        except Exception as e:  # noqa: BLE001 - a fetcher bug must not take the request down with a 500
            return UnreadableImageError(upload.label, f"cannot fetch ({type(e).__name__}: {e})")

    def shutdown(self) -> None:
        for pool in (self.normal, self.heavy, self.fetch):
            pool.shutdown(wait=False, cancel_futures=True)
