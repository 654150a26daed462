"""The `blipcap` command line: parse, call the library, print.

Exit codes: 0 every image captioned; 1 setup error (model not available, bad checkpoint);
2 usage error; 3 some images could not be captioned (each reported on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Iterator, Sequence

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def _expand(inputs: Sequence[str]) -> Iterator[str]:
    """Files as given; directories walked recursively for image files, in sorted order."""
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                        yield str(Path(root) / name)
        else:
            yield item  # a missing file is reported per item, like any other bad input


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="large", help="short name (large, base), Hub repo id or local directory")
    p.add_argument("--revision", default=None, help="pin a Hub revision (branch, tag or commit)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"],
                   help="auto: ONNX Runtime for a directory made by export-onnx, else PyTorch")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: physical cores)")


def _options(args: argparse.Namespace):
    from .decoding import CaptionOptions

    over = {}
    for field, value in (("num_beams", args.beams), ("max_new_tokens", args.max_new_tokens),
                         ("min_new_tokens", args.min_new_tokens), ("repetition_penalty", args.repetition_penalty),
                         ("temperature", args.temperature), ("top_p", args.top_p), ("top_k", args.top_k),
                         ("seed", args.seed), ("prompt", args.prompt)):
        if value is not None:
            over[field] = value
    if args.sample:
        over["do_sample"] = True
    if args.keep_prompt:
        over["keep_prompt"] = True
    if args.no_artefact_filter:
        over["suppress_artefacts"] = False
    base = CaptionOptions.preset(args.preset) if args.preset else None
    return base, over


def cmd_caption(args: argparse.Namespace) -> int:
    from .captioner import Captioner

    from .decoding import CaptionOptions

    base, over = _options(args)
    (base or CaptionOptions()).replace(**over)  # impossible combinations fail before the model loads
    cap = Captioner.load(args.model, device=args.device, dtype=args.dtype, revision=args.revision,
                         allow_urls=args.allow_urls, backend=args.backend, threads=args.threads)
    paths = list(_expand(args.inputs))
    failed = 0
    for path, result in zip(paths, cap.caption_stream(paths, base, batch_size=args.batch_size, **over)):
        if result.error is not None:
            failed += 1
            print(f"blipcap: skipped {result.error}", file=sys.stderr)
            if args.json:
                print(json.dumps({"path": path, "caption": None, "error": str(result.error)}), flush=True)
            continue
        if args.json:
            record = {"path": path, "caption": result.text, "score": result.score}
            if result.alternatives:
                record["alternatives"] = [{"caption": a.text, "score": a.score} for a in result.alternatives]
            print(json.dumps(record, ensure_ascii=False), flush=True)
        else:
            print(f"{path}\t{result.text}", flush=True)
    if failed:
        print(f"blipcap: {failed} of {len(paths)} image(s) could not be captioned", file=sys.stderr)
    return 3 if failed else 0


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
                      per_channel=args.per_channel)
    print(f"exported {args.model} to {out} (validated against the PyTorch model)")
    return 0


def _add_export_parser(sub) -> None:
    p = sub.add_parser("export-onnx", help="export a checkpoint to ONNX graphs for the onnx backend",
                       description="Export the image encoder and decoder step to ONNX, validated against PyTorch.")
    p.add_argument("--model", default="large", help="short name (large, base), Hub repo id or local directory")
    p.add_argument("--revision", default=None)
    p.add_argument("--out", required=True, help="output directory (self-contained: graphs, tokenizer, configs)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--int8", action="store_true", help="dynamic int8 quantisation of the MatMuls (CPU)")
    group.add_argument("--fp16", action="store_true", help="float16 weights (for GPUs)")
    p.add_argument("--per-channel", action="store_true", help="per-channel int8 weight scales")
    p.set_defaults(func=cmd_export_onnx)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="blipcap", description="Fast image captioning with BLIP.")
    parser.add_argument("--version", action="version", version=f"blipcap {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("caption", help="caption images and folders", description="Print path<TAB>caption per image.")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    _add_model_args(p)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--preset", choices=["default", "quality"], help="quality: 3 beams, 5-20 tokens (BLIP paper)")
    p.add_argument("--beams", type=int, help="beam search with N beams (default: the checkpoint's, 1 for BLIP)")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--min-new-tokens", type=int)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--prompt", help='conditional captioning: the caption continues this text, e.g. "a photo of"')
    p.add_argument("--keep-prompt", action="store_true", help="include the prompt in the printed caption")
    p.add_argument("--sample", action="store_true", help="sample instead of searching")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--no-artefact-filter", action="store_true", help='allow BLIP-large\'s "arafed" artefacts')
    p.add_argument("--allow-urls", action="store_true", help="fetch http(s) URLs given as inputs")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_caption)

    _add_export_parser(sub)

    p = sub.add_parser("models", help="list the short model names and whether they are cached")
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .checkpoint import CheckpointError
    from .export import ExportError
    from .hub import ModelNotAvailableError

    try:
        return args.func(args)
    except (ModelNotAvailableError, CheckpointError, ExportError, ImportError) as exc:
        print(f"blipcap: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # impossible option combinations, bad device/dtype
        print(f"blipcap: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
