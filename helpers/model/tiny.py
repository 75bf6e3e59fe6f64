"""Randomly initialised tiny models (Llama and GPT-2 architectures) and a 257-token byte tokenizer,
built in memory and seeded: the `tiny` profile and the tests, never the main job."""

from __future__ import annotations

import torch


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what ByteLevel pre-tokenizes to)."""
    keep = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\xa1"), ord("\xac") + 1),
        *range(ord("\xae"), ord("\xff") + 1),
    ]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def byte_tokenizer():
    """A 257-token byte-level tokenizer (256 bytes + <|endoftext|>), built in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}  # token id == byte value
    vocab["<|endoftext|>"] = 256
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def tiny_hf(spec):
    """The transformers model of a tiny registry spec (tiny-gpt2: learned wpe; tiny-llama: RoPE)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if spec.name == "tiny-gpt2":
        cfg = GPT2Config(
            vocab_size=257,
            n_positions=spec.n_ctx,
            n_embd=spec.d_model,
            n_layer=spec.n_layers,
            n_head=4,
            bos_token_id=256,
            eos_token_id=256,
        )
        return GPT2LMHeadModel(cfg)
    cfg = LlamaConfig(
        vocab_size=257,
        hidden_size=spec.d_model,
        intermediate_size=4 * spec.d_model,
        num_hidden_layers=spec.n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=spec.n_ctx,
        bos_token_id=256,
        eos_token_id=256,
        pad_token_id=None,
        tie_word_embeddings=True,
    )  # a pad id would zero BOS's row
    return LlamaForCausalLM(cfg)
