"""Where captions go: sidecars, XMP, tables (JSONL/CSV/Parquet/metadata.jsonl), the search index,
Parquet shards. One Record and one Arrow schema (records.py), one atomic-write helper (atomic.py).
Imports the engine only; never the jobs or the server."""
