"""The `blipcap` command line: parse, call the library, print.

Exit codes: 0 every image captioned; 1 setup error (model not available, bad checkpoint, an
output that cannot be written); 2 usage error; 3 some images could not be captioned (each
reported on stderr or in the --errors log); 128 + N when signal N stopped a job (130 Ctrl-C,
143 SIGTERM; re-run the same command to continue).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Sequence


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="large", help="short name (large, base), Hub repo id or local directory")
    p.add_argument("--revision", default=None, help="pin a Hub revision (branch, tag or commit)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx", "tf"],
                   help="auto: ONNX Runtime for a directory made by export-onnx, else PyTorch")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: physical cores)")


# caption options as the CLI spells them: (flag's dest, option, value a set flag gives or None: its argument)
_OPTION_FLAGS = (("beams", "num_beams", None), ("max_new_tokens", "max_new_tokens", None),
                 ("min_new_tokens", "min_new_tokens", None), ("repetition_penalty", "repetition_penalty", None),
                 ("temperature", "temperature", None), ("top_p", "top_p", None), ("top_k", "top_k", None),
                 ("seed", "seed", None), ("prompt", "prompt", None), ("sample", "do_sample", True),
                 ("keep_prompt", "keep_prompt", True), ("no_artefact_filter", "suppress_artefacts", False))


def _options(args: argparse.Namespace):
    """(preset or None: the checkpoint's defaults, checked overrides); impossible ones fail here,
    before a model loads."""
    from .options import CaptionOptions, parse_overrides

    raw = {}
    for dest, option, flag_value in _OPTION_FLAGS:
        value = getattr(args, dest)
        if flag_value is None and value is not None:
            raw[option] = value
        elif flag_value is not None and value:
            raw[option] = flag_value
    base = CaptionOptions.preset(args.preset) if args.preset else None
    return base, parse_overrides(raw, base=base)


def _model_spec(args: argparse.Namespace):
    from .spec import ModelSpec

    return ModelSpec(args.model, revision=args.revision, backend=args.backend, device=args.device, dtype=args.dtype,
                     threads=args.threads)


def _load_captioner(args: argparse.Namespace):
    from .captioner import Captioner

    return Captioner.load(_model_spec(args), allow_urls=args.allow_urls)


def _sidecar_ext(value: str) -> str:
    from .jobs.discover import IMAGE_SUFFIXES

    ext = value.lstrip(".")
    if os.path.exists(value) or not re.fullmatch(r"[A-Za-z0-9_-]{1,16}", ext):
        raise ValueError(f"--sidecar {value!r} is not a file extension such as txt or caption; to caption "
                         f"a path, put it before --sidecar (or write --sidecar=txt)")
    if "." + ext.lower() in IMAGE_SUFFIXES | {".xmp"}:
        raise ValueError(f"--sidecar {ext}: that extension belongs to images or XMP sidecars (use --xmp)")
    return ext


def _db_path(value: str | None) -> Path:
    from .outputs.index import default_db_path

    if not value:
        path = default_db_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
    if os.path.isdir(value):
        raise ValueError(f"the index database {value!r} is a folder; name a file (to caption a folder, "
                         f"put it before --index, or write --index=DB)")
    return Path(value)


def _batch_size(value: str) -> int | str:
    return value if value == "auto" else int(value)


def _run_job(args: argparse.Namespace, sinks: list, excluded: list) -> int:
    """Discover, check every destination, load the model, run the bulk job, summarise."""
    from .jobs.common import Reporter, StopRequest
    from .jobs.local import BulkJob
    from .jobs.discover import find_images
    from .jobs.progress import Progress
    from .outputs.atomic import check_writable
    from .outputs.sinks import PrintSink

    base, over = _options(args)
    if args.errors:
        check_writable(Path(args.errors), "error log")
        excluded.append(args.errors)
    if not args.inputs and args.files_from is None:
        raise ValueError("nothing to caption: give images, folders, glob patterns or --files-from LIST")
    source = _datasets(args, sinks)
    paths = source.paths if source else find_images(args.inputs, recursive=not args.no_recursive,
                                                    files_from=args.files_from, exclude=excluded)
    printing = any(isinstance(s, PrintSink) for s in sinks)
    quiet = args.quiet or (printing and sys.stdout.isatty())  # a bar would garble the captions
    progress = Progress(len(paths), mode="off" if quiet else "auto")
    stop = StopRequest()
    auto = args.batch_size == "auto"  # picked once the model is loaded
    job = BulkJob(paths, sinks, options=base, overrides=over, batch_size=8 if auto else args.batch_size,
                  workers=args.workers, alt_text_max=args.alt_text_max if args.alt_text else None,
                  reporter=Reporter(args.errors, progress), progress=progress, stop=stop, prefix=args.prefix,
                  suffix=args.suffix, source=source)
    job.prepare()  # an output that cannot be written fails before the model loads
    cap = _load_captioner(args)
    if auto:
        job.batch_size = cap.auto_batch_size(base, over)
    with stop.installed():
        summary = job.run(cap)
    if getattr(args, "write_back", None) and not summary.signal:
        from .jobs.writeback import write_back

        captions = {r.path: r.caption for r in sinks[0].known()}  # this run's and earlier runs' captions
        for path in write_back(source, captions, args.write_back):
            if not args.quiet:
                print(f"blipcap: wrote {path}", file=sys.stderr)
    return _summarise(args, summary)


def _datasets(args: argparse.Namespace, sinks: list):
    """The dataset inputs (WebDataset shards, Parquet/Arrow tables, saved HF datasets), or None for files."""
    from .jobs.datasets import Datasets, is_dataset
    from .outputs.sinks import PrintSink
    from .outputs.tables import CsvSink, JsonlSink, ParquetSink

    found = [is_dataset(i) for i in args.inputs]
    write_back = getattr(args, "write_back", None)
    if not any(found):
        if write_back or args.image_column or args.key_column:
            raise ValueError("--write-back, --image-column and --key-column are for dataset inputs (.tar shards, "
                             ".parquet/.arrow tables, a folder made by save_to_disk)")
        return None
    if not all(found) or args.files_from is not None:
        raise ValueError("give dataset inputs (.tar shards, .parquet/.arrow tables, save_to_disk folders) or "
                         "images and folders, not both")
    if any(not isinstance(s, (PrintSink, CsvSink, JsonlSink, ParquetSink)) for s in sinks):
        raise ValueError("dataset samples are not files: write them with --output (and --json or --write-back); "
                         "--sidecar, --xmp, --index and --metadata-jsonl need image files")
    if write_back and not isinstance(sinks[0], (CsvSink, JsonlSink, ParquetSink)):
        raise ValueError("--write-back needs --output FILE: the table a re-run resumes from")
    source = Datasets(args.inputs, image_column=args.image_column, key_column=args.key_column)
    if write_back:
        from .jobs.writeback import check_destinations

        check_destinations(source, write_back)
    return source


def _summarise(args: argparse.Namespace, summary) -> int:
    """The summary lines on stderr, and the exit status."""
    if not args.quiet:
        print(f"blipcap: {summary.line()}", file=sys.stderr)
    if summary.failed:
        where = f"; see {args.errors}" if args.errors else ""
        print(f"blipcap: {summary.failed} of {summary.total} image(s) could not be captioned{where}", file=sys.stderr)
    if summary.signal:
        print(f"blipcap: stopped by signal {summary.signal}; run the same command again to continue",
              file=sys.stderr)
        return 128 + summary.signal
    return 3 if summary.failed else 0


def _run_ray(args: argparse.Namespace) -> int:
    """caption --engine ray: the Ray Data job (distributed.py) writes Parquet shards to --output DIR."""
    from .jobs.common import Reporter
    from .jobs.ray_job import PoolSpec, RayJob
    from .outputs.atomic import check_writable

    local_only = [flag for flag, used in (("--sidecar", args.sidecar is not None), ("--xmp", args.xmp),
                                          ("--index", args.index is not None), ("--json", args.json),
                                          ("--metadata-jsonl", args.metadata_jsonl), ("--allow-urls", args.allow_urls),
                                          ("--prefix/--suffix", bool(args.prefix or args.suffix)),
                                          ("--xmp-name", args.xmp_name is not None), ("--embed", args.embed),
                                          (f"--existing {args.existing}", args.existing != "skip"),
                                          ("--batch-size auto", args.batch_size == "auto")) if used]
    if local_only:
        raise ValueError(f"--engine ray writes --output DIR only; {', '.join(local_only)}: use the local engine")
    if not args.output:
        raise ValueError("--engine ray needs --output DIR, the folder its Parquet shards go to")
    if not args.inputs and args.files_from is None:
        raise ValueError("nothing to caption: give folders, images, URIs (s3://...) or --files-from LIST")
    base, over = _options(args)
    if args.errors:
        check_writable(Path(args.errors), "error log")
    model = _model_spec(args)
    pool = PoolSpec(args.workers, args.cpus_per_worker or 1.0, args.gpus_per_worker or 0.0, args.batch_size)
    job = RayJob(args.inputs, args.output, model, pool, options=base, overrides=over,
                 alt_text_max=args.alt_text_max if args.alt_text else None, files_from=args.files_from,
                 recursive=not args.no_recursive, reporter=Reporter(args.errors), quiet=args.quiet,
                 image_column=args.image_column, key_column=args.key_column)
    summary = job.run(address=args.ray_address)
    if args.write_back:
        from .jobs.writeback import write_back

        if job.dataset is None:
            raise ValueError("--write-back is for dataset inputs (.tar shards, .parquet/.arrow tables, save_to_disk)")
        for path in write_back(job.dataset, job.captions(), args.write_back):
            if not args.quiet:
                print(f"blipcap: wrote {path}", file=sys.stderr)
    return _summarise(args, summary)


def cmd_caption(args: argparse.Namespace) -> int:
    from .outputs.index import IndexSink
    from .outputs.sinks import PrintSink, SidecarSink, XmpSink
    from .outputs.tables import MetadataSink, open_output

    if args.engine == "ray":
        return _run_ray(args)
    ray_only = [f for f, v in (("--ray-address", args.ray_address), ("--cpus-per-worker", args.cpus_per_worker),
                                ("--gpus-per-worker", args.gpus_per_worker)) if v is not None]
    if ray_only:
        raise ValueError(f"{', '.join(ray_only)}: only with --engine ray")
    sinks, excluded = [], []
    if args.xmp_name and not (args.xmp or args.embed):
        raise ValueError("--xmp-name: only with --xmp or --embed (RAW files get a sidecar)")
    if args.touch and not args.embed:
        raise ValueError("--touch: only with --embed")
    if args.sidecar is not None:
        sinks.append(SidecarSink(_sidecar_ext(args.sidecar), args.existing))
    if args.output:
        sinks.append(open_output(args.output, args.existing))
        excluded.append(args.output)
    if args.xmp:
        sinks.append(XmpSink(args.existing, args.xmp_name))
    if args.embed:
        from .outputs.embed import EmbedSink

        sinks.append(EmbedSink(args.existing, alt_text=args.alt_text, touch=args.touch, xmp_name=args.xmp_name))
    if args.index is not None:
        db = _db_path(args.index)
        sinks.append(IndexSink(db, args.existing))
        excluded.append(db)
    if args.metadata_jsonl:
        sinks.append(MetadataSink(args.metadata_jsonl, args.existing))
        excluded.append(os.path.join(args.metadata_jsonl, "metadata.jsonl"))
    if not sinks or args.json:
        sinks.append(PrintSink(json_lines=args.json))
    return _run_job(args, sinks, excluded)


def cmd_index(args: argparse.Namespace) -> int:
    from .outputs.index import Index, IndexSink

    db = _db_path(args.db)
    status = 0
    if args.inputs or args.files_from is not None:
        status = _run_job(args, [IndexSink(db, args.existing)], [db])
    elif not args.prune:
        raise ValueError("nothing to index: give images, folders or --files-from LIST (or --prune)")
    if args.prune and status in (0, 3):
        index = Index(db, create=False)
        gone = index.prune()
        index.close()
        if not args.quiet:
            print(f"blipcap: pruned {len(gone)} entr{'y' if len(gone) == 1 else 'ies'} whose files are gone",
                  file=sys.stderr)
    return status


def cmd_search(args: argparse.Namespace) -> int:
    from .outputs.index import Index
    from .outputs.paths import line_path, path_from_text

    index = Index(_db_path(args.db), create=False)
    bold = sys.stdout.isatty() and not args.json
    hits = index.search(args.query, limit=args.limit, highlight=("\x1b[1m", "\x1b[0m") if bold else ("[", "]"))
    index.close()
    for hit in hits:
        if args.json:
            print(json.dumps({"path": hit.path, "caption": hit.caption, "snippet": hit.snippet, "rank": hit.rank},
                             ensure_ascii=False))
        else:
            print(f"{line_path(path_from_text(hit.path))}\t{hit.snippet}")
    if not hits:
        print(f"blipcap: no image matches {args.query!r}", file=sys.stderr)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .hub import MODELS

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
    from .export import export_onnx

    out = export_onnx(args.model, args.out, revision=args.revision, int8=args.int8, fp16=args.fp16,
                      per_channel=not args.per_tensor)
    print(f"exported {args.model} to {out} (validated against the PyTorch model)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import format_table, run_bench

    result = run_bench(args.model, random=args.random, backend=args.backend, device=args.device, dtype=args.dtype,
                       batch_size=args.batch_size, images=args.images, beams=args.beams, new_tokens=args.new_tokens,
                       against=args.against)
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_table(result))
    return 0


def _result_limit(value: str) -> int:
    n = int(value) if value.strip().lstrip("+-").isdigit() else 0
    if not 1 <= n <= 1_000_000:
        raise argparse.ArgumentTypeError(f"--limit must be between 1 and 1000000, got {value}")
    return n


def _add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="time blipcap (and transformers) on the same images and options",
                       description="Seconds per image (encode/decode), images/s, load time, peak memory.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="short name, Hub repo id, checkpoint or ONNX export directory")
    which.add_argument("--random", choices=["large", "base", "tiny"],
                       help="a random-initialised checkpoint of this shape, built in a temp dir (offline)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx", "tf"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16", "int8"],
                   help="int8: with --random and --backend onnx, a dynamically quantised export")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--beams", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=20)
    p.add_argument("--against", choices=["transformers"], help="also time transformers at fp32 and bf16/fp16")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)


def _add_export_parser(sub) -> None:
    p = sub.add_parser("export-onnx", help="export a checkpoint to ONNX graphs for the onnx backend",
                       description="Export the image encoder and decoder step to ONNX, validated against PyTorch.")
    p.add_argument("--model", default="large", help="short name (large, base), Hub repo id or local directory")
    p.add_argument("--revision", default=None)
    p.add_argument("--out", required=True, help="output directory (self-contained: graphs, tokenizer, configs)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--int8", action="store_true", help="dynamic int8 quantisation of the MatMuls (CPU)")
    group.add_argument("--fp16", action="store_true", help="float16 weights (for GPUs)")
    p.add_argument("--per-tensor", action="store_true",
                   help="one int8 scale per weight matrix instead of per output channel (same speed here, "
                        "worse agreement: see BENCHMARKS.md)")
    p.set_defaults(func=cmd_export_onnx)


def _add_input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", metavar="IMAGE_DIR_OR_GLOB",
                   help="images, folders (searched recursively) and glob patterns such as 'photos/**/*.jpg'")
    p.add_argument("--files-from", metavar="LIST", help="also caption the paths in LIST, one per line (- for stdin)")
    p.add_argument("--no-recursive", action="store_true", help="do not descend into subfolders")
    p.add_argument("--allow-urls", action="store_true", help="fetch http(s) URLs given as inputs")
    p.add_argument("--image-column", metavar="COL", help="dataset tables: the column of image bytes or Image "
                                                         "structs (default: detected, and stated)")
    p.add_argument("--key-column", metavar="COL", help="dataset tables: the column naming each row (default: "
                                                       "key, __key__ or id if present, else the row number)")


def _add_option_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("caption options")
    g.add_argument("--preset", choices=["default", "quality"], help="quality: 3 beams, 5-20 tokens (BLIP paper)")
    g.add_argument("--beams", type=int, help="beam search with N beams (default: the checkpoint's, 1 for BLIP)")
    g.add_argument("--max-new-tokens", type=int)
    g.add_argument("--min-new-tokens", type=int)
    g.add_argument("--repetition-penalty", type=float)
    g.add_argument("--prompt", help='conditional captioning: the caption continues this text, e.g. "a photo of"')
    g.add_argument("--keep-prompt", action="store_true", help="include the prompt in the printed caption")
    g.add_argument("--sample", action="store_true", help="sample instead of searching")
    g.add_argument("--temperature", type=float)
    g.add_argument("--top-p", type=float)
    g.add_argument("--top-k", type=int)
    g.add_argument("--seed", type=int)
    g.add_argument("--no-artefact-filter", action="store_true", help='allow BLIP-large\'s "arafed" artefacts')
    g.add_argument("--alt-text", action="store_true",
                   help='write captions as alt text: no "a picture of" lead-in, capitalised, a period, short')
    g.add_argument("--alt-text-max", type=int, default=125, metavar="N", help="alt text length limit (default 125)")
    g.add_argument("--prefix", default="", metavar="TEXT",
                   help='written before every caption, as given (a training set\'s trigger word: --prefix "ohwx, ")')
    g.add_argument("--suffix", default="", metavar="TEXT", help="written after every caption, as given")


def _add_job_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("job")
    g.add_argument("--batch-size", type=_batch_size, default=8,
                   help="images per model call (default 8; auto: the most that fit the device's memory)")
    g.add_argument("--workers", type=int, help="image decoding threads (default: CPU count, at most 8); with "
                                               "--engine ray, model copies (default: as many as the cluster holds)")
    g.add_argument("--existing", choices=["skip", "overwrite", "append"], default="skip",
                   help="images an output already holds: skip (default; re-runs resume), overwrite, or append "
                        "another caption")
    g.add_argument("--errors", metavar="FILE", help="write one line per failed image (path<TAB>reason) to FILE")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress and no summary")


def _add_ray_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scale out on a Ray cluster (pip install 'blipcap[ray]')")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process (default); ray: a Ray Data job, --output DIR gets Parquet shards")
    g.add_argument("--ray-address", metavar="ADDR",
                   help="the cluster: auto (the one `ray start` runs here) or HOST:PORT (default: $RAY_ADDRESS, "
                        "else a Ray started on this machine for the job)")
    g.add_argument("--cpus-per-worker", type=float, metavar="C", help="CPUs Ray reserves per model copy (default 1)")
    g.add_argument("--gpus-per-worker", type=float, metavar="G",
                   help="GPUs per model copy (default 0; 1 = one GPU each, 0.5 = two copies share a GPU)")


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import ServerConfig, require_serve_extra

    require_serve_extra()  # before the model loads
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise ValueError(f"--api-key-env {args.api_key_env}: that environment variable is not set or empty")
    if args.allow_edits and args.index is None:
        raise ValueError("--allow-edits edits the captions of an index: give --index [DB] too")
    index_db = str(_db_path(args.index)) if args.index is not None else None
    config = ServerConfig(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                          max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels, timeout_s=args.timeout_s,
                          api_key=api_key, allow_urls=args.serve_allow_urls, header_timeout_s=args.header_timeout_s,
                          keep_alive_s=args.keep_alive_s, max_connections=args.max_connections, index_db=index_db,
                          allow_edits=args.allow_edits, served_model_names=tuple(args.served_model_name))
    if args.model is None and index_db is None:
        args.model = "large"
    cap = None  # --index without --model: search only, no model loaded
    if args.model is not None:
        cap = _load_captioner(args)  # with allow_urls=False: the server fetches URLs itself, checked
    from .server.run import serve

    serve(cap, config, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _add_serve_parser(sub) -> None:
    from .images import DEFAULT_MAX_PIXELS

    p = sub.add_parser("serve", help="run the HTTP captioning service (needs the serve extra)",
                       description="POST /v1/caption, a web page at /, /healthz, /readyz, /metrics, /docs; "
                                   "with --index, a search page at /search, /v1/search and /v1/thumbnail/{id}.")
    _add_model_args(p)
    g = p.add_argument_group("service")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument("--max-batch-size", type=int, default=16, help="images per model call (default 16)")
    g.add_argument("--max-wait-ms", type=float, default=10.0, help="how long an image waits for its batch to fill")
    g.add_argument("--max-queue", type=int, default=256, help="images admitted at once; more get 503 + Retry-After")
    g.add_argument("--max-upload-mb", type=float, default=20.0, help="request body limit (413 above)")
    g.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="per image (422 above)")
    g.add_argument("--timeout-s", type=float, default=60.0, help="per request (504 above)")
    g.add_argument("--header-timeout-s", type=float, default=10.0,
                   help="a request's headers must arrive within this (408 and closed after)")
    g.add_argument("--keep-alive-s", type=float, default=5.0, help="idle keep-alive connections close after this")
    g.add_argument("--max-connections", type=int, default=1000,
                   help="open connections at once; more get 503 + Retry-After")
    g.add_argument("--api-key-env", metavar="VAR", help="require the API key held in environment variable VAR")
    g.add_argument("--allow-urls", dest="serve_allow_urls", action="store_true",
                   help="fetch http(s) image URLs given in JSON bodies (public addresses only)")
    g.add_argument("--served-model-name", nargs="+", default=[], metavar="NAME",
                   help="names the OpenAI and Ollama endpoints also answer to, besides the model id")
    g.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    g = p.add_argument_group("search the index in the browser (/search)")
    g.add_argument("--index", nargs="?", const="", metavar="DB",
                   help="serve a search page and /v1/search over this index (default: the one `blipcap search` "
                        "uses); without --model, no model is loaded and the server only searches")
    g.add_argument("--allow-edits", action="store_true",
                   help="let the page correct captions (PUT /v1/captions/{id}); caption runs keep such edits")
    p.set_defaults(func=cmd_serve, allow_urls=False, model=None)  # model None: "large", unless --index alone


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="blipcap", description="Fast image captioning with BLIP.")
    parser.add_argument("--version", action="version", version=f"blipcap {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("caption", help="caption images and folders",
                       description="Caption images, folders and glob patterns. With no output option, print "
                                   "path<TAB>caption per image; --sidecar, --output, --xmp, --index and "
                                   "--metadata-jsonl write files, in any combination.")
    _add_input_args(p)
    _add_model_args(p)
    _add_option_args(p)
    _add_job_args(p)
    out = p.add_argument_group("outputs (any combination; re-runs skip images already done)")
    out.add_argument("--sidecar", nargs="?", const="txt", metavar="EXT",
                     help="a caption file beside each image: photo.jpg -> photo.txt (or photo.EXT)")
    out.add_argument("--output", metavar="FILE", help="one record per image: .jsonl, .csv or .parquet (with "
                                                      "--engine ray: a folder of Parquet shards)")
    out.add_argument("--xmp", action="store_true",
                     help="XMP sidecars: dc:description and IPTC alt text, merged into existing ones")
    out.add_argument("--xmp-name", choices=["ext", "base"],
                     help="ext: photo.jpg.xmp (darktable, digiKam, Immich); base: photo.xmp (Adobe's RAW "
                          "sidecars); default: update the one that exists, else write photo.jpg.xmp")
    out.add_argument("--embed", action="store_true",
                     help="write the caption into JPEG, PNG, WebP and TIFF files (XMP, EXIF, IPTC; needs exiftool); "
                          "RAW files get an XMP sidecar instead")
    out.add_argument("--touch", action="store_true", help="with --embed: let written images take the current "
                                                         "time as their mtime (default: keep it)")
    out.add_argument("--index", nargs="?", const="", metavar="DB",
                     help="add to a search index (default: the one `blipcap search` uses)")
    out.add_argument("--metadata-jsonl", metavar="DIR",
                     help="DIR/metadata.jsonl (file_name, text) for a Hugging Face ImageFolder dataset")
    out.add_argument("--json", action="store_true", help="print one JSON object per line on stdout")
    out.add_argument("--write-back", metavar="DIR", help="dataset inputs: a copy of each in DIR with the "
                                                         "captions (.txt members, a caption column); needs --output")
    _add_ray_args(p)
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("index", help="caption images into the search index",
                       description="Caption images and folders into the search index (`caption --index`); "
                                   "files already indexed and unchanged are skipped.")
    _add_input_args(p)
    _add_model_args(p)
    _add_option_args(p)
    _add_job_args(p)
    p.add_argument("--db", metavar="DB", help="the index database (default: in your user data folder)")
    p.add_argument("--prune", action="store_true", help="drop entries whose files no longer exist")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="find indexed images by what their captions say",
                       description="Full-text search over the captions in the index, best match first.")
    p.add_argument("query", help='words to look for, e.g. "dog on a beach"')
    p.add_argument("--db", metavar="DB", help="the index database (default: in your user data folder)")
    p.add_argument("--limit", type=_result_limit, default=20, help="at most this many results (default 20)")
    p.add_argument("--json", action="store_true", help="one JSON object per line: path, caption, snippet, rank")
    p.set_defaults(func=cmd_search)

    _add_export_parser(sub)
    _add_bench_parser(sub)
    _add_serve_parser(sub)

    p = sub.add_parser("models", help="list the short model names and whether they are cached")
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .checkpoint import CheckpointError
    from .jobs.ray_job import RayJobError
    from .export import ExportError
    from .hub import ModelNotAvailableError
    from .outputs.records import SinkError

    try:
        return args.func(args)
    except (ModelNotAvailableError, CheckpointError, ExportError, ImportError, SinkError, RayJobError) as exc:
        print(f"blipcap: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # impossible option combinations, bad device/dtype
        print(f"blipcap: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
