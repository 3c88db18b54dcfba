"""The embedded default model: a tiny, randomly initialised chat model built offline.

No weights can be downloaded on the machines that run the quickstart and CI, so sdg builds
(once, then cached) a real HF architecture with a real tokenizer and chat template, saved with
``save_pretrained``. vLLM loads it exactly like a hub model. Its output is noise: it exercises the
engine path and throughput, never the quality of the text.
"""

from __future__ import annotations

import os
from pathlib import Path

TINY_MODEL_NAME = "sdg/tiny-random-chat"
"""The spec's ``model.name`` that selects the embedded model instead of an HF id or path."""

# ChatML: a template with a clear user-turn prefix, which the magpie stage relies on.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 4096
# head_dim = hidden_size / num_attention_heads = 32: vLLM's CPU attention needs at least 32.
ARCHITECTURE = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
)
BUILD_VERSION = "1"  # bump when the recipe above changes, so cached copies are rebuilt


def cache_dir() -> Path:
    root = Path(os.environ.get("SDG_CACHE", Path.home() / ".cache" / "sdg"))
    return root / f"tiny-random-chat-v{BUILD_VERSION}"


# Text to learn a byte-level BPE from: enough English for plausible token boundaries. Byte-level
# means any input still tokenizes, so prompts in any language work.
_TRAINING_TEXT = """
Come up with a series of tasks. Instruction: Input: Output: Answer the question below.
You are a helpful assistant. Please explain the answer step by step and give an example.
Rewrite the given prompt into a more complex version that adds one more constraint.
Write a short story, a poem, a summary, an email or a list of ideas about the topic.
The quick brown fox jumps over the lazy dog while the weather is warm and sunny today.
Classify the sentiment of the review as positive or negative, and explain your reasoning.
Translate the sentence into French, German, Spanish or Chinese and keep the meaning.
What is the capital of France? How many days are in a leap year? Why is the sky blue?
Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000, and punctuation: . , ; : ! ? ( ) [ ] { } " ' - #
""".strip().splitlines()


def build(target: Path) -> Path:
    """Build the tokenizer and the random model into ``target`` (atomically: tmp dir + rename)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(_TRAINING_TEXT, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=ARCHITECTURE["max_position_embeddings"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(tmp)

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
        torch_dtype="float32",
        **ARCHITECTURE,
    )
    LlamaForCausalLM(config).save_pretrained(tmp)
    tmp.rename(target)
    return target


def ensure_tiny_model() -> Path:
    """Return the local path of the embedded model, building it on first use."""
    target = cache_dir()
    if not (target / "config.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            build(target)
        except OSError:
            # Another process won the race to build it: use theirs.
            if not (target / "config.json").exists():
                raise
    return target
