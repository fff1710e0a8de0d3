"""Tiny random-weight Qwen2/Llama models built offline in about a second, for fast unit tests.

Tests must not depend on a model hub, so the tokenizer is trained here on a built-in corpus and the
weights are random. `write_checkpoint` writes a BF16 Hugging Face folder; `write_gguf` writes the same
model (same seed, same tokenizer) as a qwen2 GGUF file that transformers can load.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import (AutoModelForCausalLM, LlamaConfig, PreTrainedModel, PreTrainedTokenizerFast,
                          Qwen2Config, Qwen2Tokenizer)

EOS = "<|endoftext|>"
# The specials transformers' GGUF qwen2 converter adds, so the tokenizer loaded from GGUF has the same
# added tokens (and ids) as the trained one.
SPECIAL_TOKENS = [EOS, "<|im_start|>", "<|im_end|>"]
# ChatML with a default system prompt, in the shape of Qwen2.5's own template (which adds tools).
CHAT_TEMPLATE = (
    "{%- if messages[0].role != 'system' %}"
    "{{- '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}")
# Qwen2's pre-tokenizer split, copied from transformers' Qwen2Converter so GGUF round trips give the same ids.
QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
               r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")

_ENGLISH = """\
The quick brown fox jumps over the lazy dog while the cat sleeps in the warm afternoon sun.
A draft model proposes several tokens and the target model verifies them in a single pass.
Speculative decoding keeps the output identical to the target model but makes generation faster.
When the draft is wrong, the target rejects the proposal and generation continues from its own token.
Small models are cheap to run, large models are accurate, and a chain of levels trades one for the other.
Weights can be stored in eight bits, four bits or in a floating point format with a shared scale.
The tokenizer splits text into pieces; every level of a chain must map text to the same token ids.
She opened the window, looked at the river and wrote a short letter to her brother in the city.
Numbers such as 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 42, 100 and 2024 appear in tables and reports.
"""
_PYTHON = """\
def fibonacci(n: int) -> int:
    \"\"\"Return the n-th Fibonacci number.\"\"\"
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)


class Counter:
    def __init__(self, start: int = 0) -> None:
        self.value = start

    def increment(self, step: int = 1) -> int:
        self.value += step
        return self.value


for index, item in enumerate(["alpha", "beta", "gamma"]):
    print(f"{index}: {item}")

import json
from pathlib import Path

config = json.loads(Path("config.json").read_text())
tokens = [token for token in config.get("tokens", []) if token]
result = {"count": len(tokens), "first": tokens[0] if tokens else None}
with open("result.json", "w", encoding="utf-8") as handle:
    json.dump(result, handle, indent=2)
"""
DEFAULT_CORPUS = "\n".join([_ENGLISH, _PYTHON] * 2 + [_ENGLISH.upper(), _PYTHON.replace("    ", "\t")])


def train_tokenizer(text: str, vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with Qwen2's normalizer and pre-tokenizer, specials last as in Qwen2; deterministic."""
    backend = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = BpeTrainer(vocab_size=vocab_size - len(SPECIAL_TOKENS), show_progress=False,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(text.splitlines(keepends=True), trainer)
    # Specials go into the BPE vocab and the prefix/suffix fields become "" as transformers' GGUF converter
    # writes them, so a GGUF round trip keeps the whole tokenizer.json (and its fingerprint) unchanged.
    spec = json.loads(backend.to_str())
    spec["model"] |= {"continuing_subword_prefix": "", "end_of_word_suffix": ""}
    spec["model"]["vocab"] |= {token: len(spec["model"]["vocab"]) + i for i, token in enumerate(SPECIAL_TOKENS)}
    backend = Tokenizer.from_str(json.dumps(spec))
    backend.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = Qwen2Tokenizer(tokenizer_object=backend)  # eos, pad and unk "<|endoftext|>", no bos, as in Qwen2
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer: PreTrainedTokenizerFast, *, seed: int = 0,
                architecture: str = "qwen2") -> PreTrainedModel:
    """The tiny BF16 model: 2 layers, hidden 64, 4 heads / 2 KV heads (GQA like the real families)."""
    config_class = {"qwen2": Qwen2Config, "llama": LlamaConfig}[architecture]
    eos = tokenizer.eos_token_id
    config = config_class(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          intermediate_size=128, max_position_embeddings=512, vocab_size=len(tokenizer),
                          tie_word_embeddings=False, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).to(torch.bfloat16)


def write_checkpoint(folder: Path, *, vocab_size: int = 512, corpus: str = DEFAULT_CORPUS, seed: int = 0,
                     architecture: str = "qwen2") -> Path:
    """A BF16 safetensors checkpoint plus tokenizer files in `folder`, like a hub download."""
    tokenizer = train_tokenizer(corpus, vocab_size)
    build_model(tokenizer, seed=seed, architecture=architecture).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_gguf(path: Path, *, seed: int = 0) -> Path:
    """The default qwen2 checkpoint of `seed` as an F32 GGUF file (exact BF16 values) with its tokenizer."""
    import gguf

    tokenizer = train_tokenizer(DEFAULT_CORPUS, 512)
    model = build_model(tokenizer, seed=seed)
    config = model.config
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_name("tiny-qwen2")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    backend = tokenizer.backend_tokenizer
    special = set(SPECIAL_TOKENS)
    tokens = [backend.id_to_token(index) for index in range(len(tokenizer))]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if token in special else gguf.TokenType.NORMAL
                            for token in tokens])
    writer.add_token_merges(_merges(backend))
    for add_id in (writer.add_eos_token_id, writer.add_bos_token_id, writer.add_pad_token_id):
        add_id(tokenizer.eos_token_id)
    writer.add_add_bos_token(False)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        stem, suffix = hf_name.rsplit(".", 1)
        writer.add_tensor(f"{names.get_name(stem)}.{suffix}", tensor.float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _merges(backend: Tokenizer) -> list[str]:
    """BPE merges as GGUF wants them ("left right"), read from the tokenizer's JSON serialization."""
    return [" ".join(pair) if isinstance(pair, list) else pair
            for pair in json.loads(backend.to_str())["model"]["merges"]]
