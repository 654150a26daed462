"""The argument groups the commands share, and the parsers of bench, export-onnx and serve."""

from __future__ import annotations

import argparse

from .tools import cmd_bench, cmd_export_onnx, cmd_serve


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="large", help="short name (large, base), Hub repo id or local directory")
    p.add_argument("--revision", default=None, help="pin a Hub revision (branch, tag or commit)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx", "tf"],
                   help="auto: ONNX Runtime for a directory made by export-onnx, else PyTorch")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: physical cores)")
    add_image_kv_arg(p)


def add_image_kv_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-kv-dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="torch: keep the image keys/values in this type (auto: --dtype's); float16 or bfloat16 "
                        "halve their memory and, at float32, speed decoding, but are not token-identical")


# caption options as the CLI spells them: (flag's dest, option, value a set flag gives or None: its argument)
def batch_size_arg(value: str) -> int | str:
    return value if value == "auto" else int(value)


def result_limit(value: str) -> int:
    n = int(value) if value.strip().lstrip("+-").isdigit() else 0
    if not 1 <= n <= 1_000_000:
        raise argparse.ArgumentTypeError(f"--limit must be between 1 and 1000000, got {value}")
    return n


def add_bench_parser(sub) -> None:
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
    add_image_kv_arg(p)
    p.add_argument("--against", choices=["transformers"], help="also time transformers at fp32 and bf16/fp16")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)


def add_export_parser(sub) -> None:
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


def add_input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", metavar="IMAGE_DIR_OR_GLOB",
                   help="images, folders (searched recursively) and glob patterns such as 'photos/**/*.jpg'")
    p.add_argument("--files-from", metavar="LIST", help="also caption the paths in LIST, one per line (- for stdin)")
    p.add_argument("--no-recursive", action="store_true", help="do not descend into subfolders")
    p.add_argument("--allow-urls", action="store_true", help="fetch http(s) URLs given as inputs")
    p.add_argument("--image-column", metavar="COL", help="dataset tables: the column of image bytes or Image "
                                                         "structs (default: detected, and stated)")
    p.add_argument("--key-column", metavar="COL", help="dataset tables: the column naming each row (default: "
                                                       "key, __key__ or id if present, else the row number)")


def add_option_args(p: argparse.ArgumentParser) -> None:
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


def add_job_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("job")
    g.add_argument("--batch-size", type=batch_size_arg, default=8,
                   help="images per model call (default 8; auto: the most that fit the device's memory)")
    g.add_argument("--workers", type=int, help="image decoding threads (default: CPU count, at most 8); with "
                                               "--engine ray, model copies (default: as many as the cluster holds)")
    g.add_argument("--existing", choices=["skip", "overwrite", "append"], default="skip",
                   help="images an output already holds: skip (default; re-runs resume), overwrite, or append "
                        "another caption")
    g.add_argument("--errors", metavar="FILE", help="write one line per failed image (path<TAB>reason) to FILE")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress and no summary")


def add_ray_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scale out on a Ray cluster (pip install 'blipcap[ray]')")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process (default); ray: a Ray Data job, --output DIR gets Parquet shards")
    g.add_argument("--ray-address", metavar="ADDR",
                   help="the cluster: auto (the one `ray start` runs here) or HOST:PORT (default: $RAY_ADDRESS, "
                        "else a Ray started on this machine for the job)")
    g.add_argument("--cpus-per-worker", type=float, metavar="C", help="CPUs Ray reserves per model copy (default 1)")
    g.add_argument("--gpus-per-worker", type=float, metavar="G",
                   help="GPUs per model copy (default 0; 1 = one GPU each, 0.5 = two copies share a GPU)")


def add_serve_parser(sub) -> None:
    from ..images import DEFAULT_MAX_PIXELS

    p = sub.add_parser("serve", help="run the HTTP captioning service (needs the serve extra)",
                       description="POST /v1/caption, a web page at /, /healthz, /readyz, /metrics, /docs; "
                                   "with --index, a search page at /search, /v1/search and /v1/thumbnail/{id}.")
    add_model_args(p)
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
