"""caption, index and search: the folder/dataset job (local or on Ray), the index, the search."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path


_OPTION_FLAGS = (("beams", "num_beams", None), ("max_new_tokens", "max_new_tokens", None),
                 ("min_new_tokens", "min_new_tokens", None), ("repetition_penalty", "repetition_penalty", None),
                 ("temperature", "temperature", None), ("top_p", "top_p", None), ("top_k", "top_k", None),
                 ("seed", "seed", None), ("prompt", "prompt", None), ("sample", "do_sample", True),
                 ("keep_prompt", "keep_prompt", True), ("no_artefact_filter", "suppress_artefacts", False))


def caption_options(args: argparse.Namespace):
    """(preset or None: the checkpoint's defaults, checked overrides); impossible ones fail here,
    before a model loads."""
    from ..options import CaptionOptions, parse_overrides

    raw = {}
    for dest, option, flag_value in _OPTION_FLAGS:
        value = getattr(args, dest)
        if flag_value is None and value is not None:
            raw[option] = value
        elif flag_value is not None and value:
            raw[option] = flag_value
    base = CaptionOptions.preset(args.preset) if args.preset else None
    return base, parse_overrides(raw, base=base)


def model_spec(args: argparse.Namespace):
    from ..spec import ModelSpec

    return ModelSpec(args.model, revision=args.revision, backend=args.backend, device=args.device, dtype=args.dtype,
                     threads=args.threads, image_kv_dtype=args.image_kv_dtype)


def load_captioner(args: argparse.Namespace):
    from ..captioner import Captioner

    return Captioner.load(model_spec(args), allow_urls=args.allow_urls)


def _sidecar_ext(value: str) -> str:
    from ..jobs.discover import IMAGE_SUFFIXES

    ext = value.lstrip(".")
    if os.path.exists(value) or not re.fullmatch(r"[A-Za-z0-9_-]{1,16}", ext):
        raise ValueError(f"--sidecar {value!r} is not a file extension such as txt or caption; to caption "
                         f"a path, put it before --sidecar (or write --sidecar=txt)")
    if "." + ext.lower() in IMAGE_SUFFIXES | {".xmp"}:
        raise ValueError(f"--sidecar {ext}: that extension belongs to images or XMP sidecars (use --xmp)")
    return ext


def db_path(value: str | None) -> Path:
    from ..outputs.index import default_db_path

    if not value:
        path = default_db_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
    if os.path.isdir(value):
        raise ValueError(f"the index database {value!r} is a folder; name a file (to caption a folder, "
                         f"put it before --index, or write --index=DB)")
    return Path(value)


def _run_job(args: argparse.Namespace, sinks: list, excluded: list) -> int:
    """Discover, check every destination, load the model, run the bulk job, summarise."""
    from ..jobs.common import Reporter, StopRequest
    from ..jobs.local import BulkJob
    from ..jobs.discover import find_images
    from ..jobs.progress import Progress
    from ..outputs.atomic import check_writable
    from ..outputs.sinks import PrintSink

    base, over = caption_options(args)
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
    cap = load_captioner(args)
    if auto:
        job.batch_size = cap.auto_batch_size(base, over)
    with stop.installed():
        summary = job.run(cap)
    if getattr(args, "write_back", None) and not summary.signal:
        from ..jobs.writeback import write_back

        captions = {r.path: r.caption for r in sinks[0].known()}  # this run's and earlier runs' captions
        for path in write_back(source, captions, args.write_back):
            if not args.quiet:
                print(f"blipcap: wrote {path}", file=sys.stderr)
    return _summarise(args, summary)


def _datasets(args: argparse.Namespace, sinks: list):
    """The dataset inputs (WebDataset shards, Parquet/Arrow tables, saved HF datasets), or None for files."""
    from ..jobs.datasets import Datasets, is_dataset
    from ..outputs.sinks import PrintSink
    from ..outputs.parquet import ParquetSink
    from ..outputs.tables import CsvSink, JsonlSink

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
        from ..jobs.writeback import check_destinations

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
    from ..jobs.common import Reporter
    from ..jobs.ray_job import PoolSpec, RayJob
    from ..outputs.atomic import check_writable

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
    base, over = caption_options(args)
    if args.errors:
        check_writable(Path(args.errors), "error log")
    model = model_spec(args)
    pool = PoolSpec(args.workers, args.cpus_per_worker or 1.0, args.gpus_per_worker or 0.0, args.batch_size)
    job = RayJob(args.inputs, args.output, model, pool, options=base, overrides=over,
                 alt_text_max=args.alt_text_max if args.alt_text else None, files_from=args.files_from,
                 recursive=not args.no_recursive, reporter=Reporter(args.errors), quiet=args.quiet,
                 image_column=args.image_column, key_column=args.key_column)
    summary = job.run(address=args.ray_address)
    if args.write_back:
        from ..jobs.writeback import write_back

        if job.dataset is None:
            raise ValueError("--write-back is for dataset inputs (.tar shards, .parquet/.arrow tables, save_to_disk)")
        for path in write_back(job.dataset, job.captions(), args.write_back):
            if not args.quiet:
                print(f"blipcap: wrote {path}", file=sys.stderr)
    return _summarise(args, summary)


def cmd_caption(args: argparse.Namespace) -> int:
    from ..outputs.index import IndexSink
    from ..outputs.sinks import PrintSink, SidecarSink, XmpSink
    from ..outputs.tables import MetadataSink, open_output

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
        from ..outputs.embed import EmbedSink

        sinks.append(EmbedSink(args.existing, alt_text=args.alt_text, touch=args.touch, xmp_name=args.xmp_name))
    if args.index is not None:
        db = db_path(args.index)
        sinks.append(IndexSink(db, args.existing))
        excluded.append(db)
    if args.metadata_jsonl:
        sinks.append(MetadataSink(args.metadata_jsonl, args.existing))
        excluded.append(os.path.join(args.metadata_jsonl, "metadata.jsonl"))
    if not sinks or args.json:
        sinks.append(PrintSink(json_lines=args.json))
    return _run_job(args, sinks, excluded)


def cmd_index(args: argparse.Namespace) -> int:
    from ..outputs.index import Index, IndexSink

    db = db_path(args.db)
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
    from ..outputs.index import Index
    from ..outputs.paths import line_path, path_from_text

    index = Index(db_path(args.db), create=False)
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
