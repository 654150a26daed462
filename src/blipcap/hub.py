"""Model names -> a local checkpoint directory.

Owns: the short names, fetching only the files a checkpoint needs from the Hugging Face Hub
(through huggingface_hub, into the standard HF cache, honouring HF_HUB_OFFLINE and a pinned
revision), and the one clear error for a model that is neither cached nor reachable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MODELS = {
    "large": "Salesforce/blip-image-captioning-large",
    "base": "Salesforce/blip-image-captioning-base",
}
DEFAULT_MODEL = "large"

# Each group lists alternatives in order of preference: the first that exists is fetched, never several.
_GROUPS = (
    (("config.json",),),
    (("model.safetensors",), ("pytorch_model.bin",)),
    (("tokenizer.json",), ("vocab.txt", "tokenizer_config.json")),
    (("preprocessor_config.json",),),
)
_OPTIONAL = ((("generation_config.json",),),)


class ModelNotAvailableError(RuntimeError):
    """The model is neither a local directory, nor in the HF cache, nor downloadable from here."""


@dataclass(frozen=True)
class ResolvedModel:
    path: Path  # directory holding config.json, weights, tokenizer and preprocessor files
    model_id: str  # what the caller asked for, with short names expanded
    revision: str | None  # the pinned revision, or the snapshot's commit when known


def _not_available(repo_id: str, revision: str | None, cause: Exception) -> ModelNotAvailableError:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    why = "HF_HUB_OFFLINE is set" if offline else f"the Hub could not be reached or refused ({type(cause).__name__})"
    rev = f" at revision {revision}" if revision else ""
    return ModelNotAvailableError(
        f"The model {repo_id!r}{rev} is not in the Hugging Face cache and cannot be downloaded ({why}). "
        f"Either pass a local checkpoint directory (config.json, model.safetensors or pytorch_model.bin, "
        f"tokenizer.json and preprocessor_config.json), for example `--model ./blip-large`; or, on a machine "
        f"with internet access, run `huggingface-cli download {repo_id}` (or `blipcap caption --model {repo_id} "
        f"any.jpg`) to fill the cache, then copy the cache directory (~/.cache/huggingface, or $HF_HOME) here."
    )


def _download(repo_id: str, alternatives: tuple[tuple[str, ...], ...], required: bool, **kw) -> Path | None:
    """Fetch (or find in the cache) the first alternative whose files all exist; its first file's path."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    not_cached: Exception | None = None
    for files in alternatives:
        try:
            return [Path(hf_hub_download(repo_id, name, **kw)) for name in files][0]
        except RemoteEntryNotFoundError:
            continue  # the repo exists but lacks this format: try the next one
        except LocalEntryNotFoundError as exc:
            not_cached = exc  # offline or unreachable, and not cached: another format may be
    if not required:
        return None
    if not_cached is not None:
        raise not_cached
    names = " or ".join(" + ".join(files) for files in alternatives)
    raise ModelNotAvailableError(f"{repo_id!r} has no {names}: not a BLIP captioning checkpoint")


def resolve(model: str | os.PathLike = DEFAULT_MODEL, *, revision: str | None = None,
            cache_dir: str | os.PathLike | None = None, local_files_only: bool = False) -> ResolvedModel:
    """A short name, a Hub repo id or a local directory -> the directory to load from."""
    local = Path(model).expanduser()
    if local.is_dir():
        return ResolvedModel(local, str(model), revision)
    name = str(model)
    repo_id = MODELS.get(name, name)
    if name not in MODELS and (name.startswith((".", "/", "~")) or name.count("/") != 1):
        raise ModelNotAvailableError(
            f"{name!r} is neither a local directory, nor a short name ({', '.join(MODELS)}), nor a Hub repo id (owner/name)"
        )
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    kw = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    try:
        config = _download(repo_id, _GROUPS[0], True, **kw)
        for group in _GROUPS[1:]:
            _download(repo_id, group, True, **kw)
        for group in _OPTIONAL:
            _download(repo_id, group, False, **kw)
    except LocalEntryNotFoundError as exc:
        raise _not_available(repo_id, revision, exc) from exc
    except HfHubHTTPError as exc:  # repository or revision not found, gated, server errors
        raise ModelNotAvailableError(f"cannot fetch {repo_id!r}: {exc}") from exc
    snapshot = config.parent
    return ResolvedModel(snapshot, repo_id, revision or snapshot.name)
