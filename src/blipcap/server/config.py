"""The service's limits and settings, one frozen dataclass shared by the app, batcher and runner."""

from __future__ import annotations

from dataclasses import dataclass

from ..images import DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class ServerConfig:
    # batching
    max_batch_size: int = 16  # images per model call
    max_wait_ms: float = 10.0  # how long the oldest queued image waits for its batch to fill
    max_queue: int = 256  # images waiting or being decoded; more -> 503 + Retry-After

    # per-request limits
    max_upload_mb: float = 20.0  # request body, whatever its shape; more -> 413
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # per image, from its header; more -> 422
    timeout_s: float = 60.0  # body read + decode + queue + model; more -> 504

    # connections (see connections.py)
    header_timeout_s: float = 10.0  # request line + headers; later -> 408 and closed
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this
    max_connections: int = 1000  # open at once; more -> 503 + Retry-After
    max_beams: int = 8  # num_beams and num_return_sequences above this -> 422
    max_new_tokens: int = 64  # also bounded by the model's positions

    # access
    api_key: str | None = None  # when set, /v1/* and /metrics need it (401 without)
    allow_urls: bool = False  # fetch http(s) image URLs, public addresses only
    url_timeout_s: float = 10.0  # total, per URL, redirects included
    max_url_mb: float = 20.0  # per URL body

    # names the OpenAI and Ollama endpoints answer to, besides the model id
    served_model_names: tuple[str, ...] = ()

    # threads
    decode_workers: int = 2  # image decoding and URL fetching, off the event loop

    # search (serve --index): the page at /search, /v1/search, /v1/thumbnail/{id}
    index_db: str | None = None  # the index file; None: no search routes
    thumbnail_cache: str | None = None  # None: blipcap's folder in the user cache directory
    allow_edits: bool = False  # PUT /v1/captions/{id} stores a person's caption in the index

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if self.max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        if self.max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        if self.max_upload_mb <= 0 or self.max_url_mb <= 0:
            raise ValueError("upload and URL size caps must be > 0")
        if self.max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        if min(self.timeout_s, self.url_timeout_s, self.header_timeout_s, self.keep_alive_s) <= 0:
            raise ValueError("timeouts must be > 0")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise ValueError("max_pixels must be >= 1")
        if self.decode_workers < 1:
            raise ValueError("decode_workers must be >= 1")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_url_bytes(self) -> int:
        return int(self.max_url_mb * 1024 * 1024)
