"""Search the index from the browser: `blipcap serve --index DB`. `serving` (the service over the
index), `thumbnails` (checked, cached thumbnails of indexed files), `router` (the routes)."""

from .router import search_router
from .serving import SearchError, SearchService

__all__ = ["SearchError", "SearchService", "search_router"]
