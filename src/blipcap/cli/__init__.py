"""The `blipcap` command line: parse, call the library, print.

Exit codes: 0 every image captioned; 1 setup error (model not available, bad checkpoint, an
output that cannot be written); 2 usage error; 3 some images could not be captioned (each
reported on stderr or in the --errors log); 128 + N when signal N stopped a job (130 Ctrl-C,
143 SIGTERM; re-run the same command to continue).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .args import (add_bench_parser, add_export_parser, add_input_args, add_job_args, add_model_args,
                   add_option_args, add_ray_args, add_serve_parser, result_limit)
from .caption import caption_options, cmd_caption, cmd_index, cmd_search
from .tools import cmd_models

__all__ = ["build_parser", "caption_options", "main"]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="blipcap", description="Fast image captioning with BLIP.")
    parser.add_argument("--version", action="version", version=f"blipcap {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("caption", help="caption images and folders",
                       description="Caption images, folders and glob patterns. With no output option, print "
                                   "path<TAB>caption per image; --sidecar, --output, --xmp, --index and "
                                   "--metadata-jsonl write files, in any combination.")
    add_input_args(p)
    add_model_args(p)
    add_option_args(p)
    add_job_args(p)
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
    add_ray_args(p)
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("index", help="caption images into the search index",
                       description="Caption images and folders into the search index (`caption --index`); "
                                   "files already indexed and unchanged are skipped.")
    add_input_args(p)
    add_model_args(p)
    add_option_args(p)
    add_job_args(p)
    p.add_argument("--db", metavar="DB", help="the index database (default: in your user data folder)")
    p.add_argument("--prune", action="store_true", help="drop entries whose files no longer exist")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="find indexed images by what their captions say",
                       description="Full-text search over the captions in the index, best match first.")
    p.add_argument("query", help='words to look for, e.g. "dog on a beach"')
    p.add_argument("--db", metavar="DB", help="the index database (default: in your user data folder)")
    p.add_argument("--limit", type=result_limit, default=20, help="at most this many results (default 20)")
    p.add_argument("--json", action="store_true", help="one JSON object per line: path, caption, snippet, rank")
    p.set_defaults(func=cmd_search)

    add_export_parser(sub)
    add_bench_parser(sub)
    add_serve_parser(sub)

    p = sub.add_parser("models", help="list the short model names and whether they are cached")
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..checkpoint import CheckpointError
    from ..jobs.ray_job import RayJobError
    from ..export import ExportError
    from ..hub import ModelNotAvailableError
    from ..outputs.records import SinkError

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
