"""Embedded models: spec ``model.name`` values that sdg builds into the user's cache.

The machines that run the quickstart and CI cannot download from model hubs, so sdg builds these
itself on first use (once, then cached in ``$SDG_CACHE`` or ``~/.cache/sdg``) as ordinary HF
checkpoints, which vLLM then loads like any hub model. Every other name (an HF id or a local path)
goes to vLLM as it is. ``local_path`` is the only place a model name becomes what vLLM loads.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gen import smollm2_model, tiny_model


@dataclass(frozen=True)
class EmbeddedModel:
    dir_name: str
    """Versioned cache dir name: a changed recipe gets a new dir, so a stale build is never used."""
    build: Callable[[Path], None]
    """Writes the checkpoint (config, weights, tokenizer with chat template) into an empty dir."""


EMBEDDED_MODELS = {
    tiny_model.NAME: EmbeddedModel(f"tiny-random-chat-v{tiny_model.BUILD_VERSION}", tiny_model.build),
    smollm2_model.NAME: EmbeddedModel(f"smollm2-135m-instruct-v{smollm2_model.BUILD_VERSION}",
                                      smollm2_model.build),
}


def cache_root() -> Path:
    return Path(os.environ.get("SDG_CACHE", Path.home() / ".cache" / "sdg"))


def local_path(name: str) -> str:
    """What vLLM loads for a spec's ``model.name``: an embedded model's build dir (built on first
    use), else the name as given."""
    model = EMBEDDED_MODELS.get(name)
    if model is None:
        return name
    target = cache_root() / model.dir_name
    if not (target / "config.json").exists():
        _build_atomically(model, target)
    return str(target)


def _build_atomically(model: EmbeddedModel, target: Path) -> None:
    """Build in a private temporary dir, then rename it into place: a reader never sees a half
    build, and of several processes racing to build, the first rename wins and the rest use it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp", dir=target.parent))
    try:
        model.build(tmp)
        tmp.chmod(0o755)  # mkdtemp made it private; a built model is as readable as the cache
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
