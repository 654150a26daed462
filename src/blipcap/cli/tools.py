"""models, export-onnx, bench and serve."""

from __future__ import annotations

import argparse
import json
import os

from .caption import db_path, load_captioner


def cmd_models(args: argparse.Namespace) -> int:
    from ..hub import MODELS

    try:
        from huggingface_hub import scan_cache_dir

        cached = {repo.repo_id for repo in scan_cache_dir().repos}
    except Exception:  # no cache directory yet
        cached = set()
    for short, repo in MODELS.items():
        state = "cached" if repo in cached else "not downloaded"
        print(f"{short:<8}{repo:<45}{state}")
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from ..export import export_onnx

    out = export_onnx(args.model, args.out, revision=args.revision, int8=args.int8, fp16=args.fp16,
                      per_channel=not args.per_tensor)
    print(f"exported {args.model} to {out} (validated against the PyTorch model)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench import format_table, run_bench

    result = run_bench(args.model, random=args.random, backend=args.backend, device=args.device, dtype=args.dtype,
                       batch_size=args.batch_size, images=args.images, beams=args.beams, new_tokens=args.new_tokens,
                       against=args.against, image_kv_dtype=args.image_kv_dtype)
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_table(result))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ..server import ServerConfig, require_serve_extra

    require_serve_extra()  # before the model loads
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise ValueError(f"--api-key-env {args.api_key_env}: that environment variable is not set or empty")
    if args.allow_edits and args.index is None:
        raise ValueError("--allow-edits edits the captions of an index: give --index [DB] too")
    index_db = str(db_path(args.index)) if args.index is not None else None
    config = ServerConfig(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                          max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels, timeout_s=args.timeout_s,
                          api_key=api_key, allow_urls=args.serve_allow_urls, header_timeout_s=args.header_timeout_s,
                          keep_alive_s=args.keep_alive_s, max_connections=args.max_connections, index_db=index_db,
                          allow_edits=args.allow_edits, served_model_names=tuple(args.served_model_name))
    if args.model is None and index_db is None:
        args.model = "large"
    cap = None  # --index without --model: search only, no model loaded
    if args.model is not None:
        cap = load_captioner(args)  # with allow_urls=False: the server fetches URLs itself, checked
    from ..server.run import serve

    serve(cap, config, host=args.host, port=args.port, log_level=args.log_level)
    return 0
