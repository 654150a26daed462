"""The Ollama-compatible endpoints: `protocol` (the shapes and errors), `serving` (requests -> the
shared Service -> responses), `router` (the routes)."""
