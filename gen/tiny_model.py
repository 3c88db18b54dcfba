"""The embedded test model: a tiny, randomly initialised chat model built offline.

A real HF architecture with a real tokenizer and chat template, saved with ``save_pretrained``
(built on first use by ``gen.embedded_models``). Its output is noise: it exercises the engine
path and throughput fast, never the quality of the text; tests use it where text does not matter.
"""

from __future__ import annotations

from pathlib import Path

NAME = "sdg/tiny-random-chat"
"""The spec's ``model.name`` that selects this model."""

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


def build(target: Path) -> None:
    """Write the tokenizer and the random model into the empty dir ``target``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

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
    tokenizer.save_pretrained(target)

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
    LlamaForCausalLM(config).save_pretrained(target)

