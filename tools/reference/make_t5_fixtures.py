"""Writes the T5 encoder parity fixtures: tiny random transformers T5 models and their
`T5EncoderModel` outputs.

Three folders under crates/orrery-runtime/tests/fixtures/t5/:
- `relu`: T5EncoderModel, ReLU feed-forward, inner dim (heads x d_kv) != d_model,
  model.safetensors;
- `gated_gelu`: T5EncoderModel, T5 v1.1's gated-gelu (tanh GELU), sharded safetensors;
- `t5_11b_tiny`: a full T5ForConditionalGeneration (encoder and decoder) saved as
  pytorch_model.bin, whose config.json carries t5-11b's own keys (architectures
  T5WithLMHeadModel, no feed_forward_proj) with tiny sizes;
- `with_tokenizer`: a ReLU T5EncoderModel whose vocabulary is the tokenizer fixture's
  (crates/orrery-text/tests/fixtures/t5_tiny), with `encode_text.safetensors`: the ids, mask and
  `last_hidden_state` transformers gives for PROMPTS at max_length 32 (`orrery encode-text`).
Every parameter is overwritten with seeded random values (norm weights 1 + 0.1 N(0,1), other
tables N(0,1), matrices N(0,1)/sqrt(fan_in)) so no code path hides behind a zero.

For each folder and sequence length L, `io_L{L}.safetensors` holds `input_ids` and
`attention_mask` (batch 2: row 0 full, row 1 padded after 60% of L) and the reference
`last_hidden_state` computed by T5EncoderModel.from_pretrained(folder) in float32. L = 512
(Cosmos' length) and L = 200: both exceed relative_attention_max_distance = 128.

Run from the repository root:  HF_HUB_OFFLINE=1 .venv-ref/bin/python tools/reference/make_t5_fixtures.py
"""
import json
import math
import os
import shutil

import torch
from safetensors.torch import save_file
from transformers import T5Config, T5EncoderModel, T5ForConditionalGeneration, T5TokenizerFast

OUT = os.path.join("crates", "orrery-runtime", "tests", "fixtures", "t5")
torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)

TOKENIZER = os.path.join("crates", "orrery-text", "tests", "fixtures", "t5_tiny")
PROMPTS = ["A robot arm picks up a red cube from a cluttered table.", ""]

SMALL = dict(vocab_size=96, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=4,
             relative_attention_num_buckets=32, relative_attention_max_distance=128,
             layer_norm_epsilon=1e-6)


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif "shared" in name or "embed" in name or "relative_attention_bias" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))


def inputs(length, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (2, length), generator=g)
    mask = torch.ones(2, length, dtype=torch.long)
    real = int(0.6 * length)
    mask[1, real:] = 0
    ids[1, real:] = 0  # the pad id, as the tokenizer writes it
    return ids, mask


def write_io(folder, vocab, seed):
    model = T5EncoderModel.from_pretrained(folder, dtype=torch.float32).eval()
    for length in (512, 200):
        ids, mask = inputs(length, vocab, seed + length)
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        path = os.path.join(folder, f"io_L{length}.safetensors")
        save_file({"input_ids": ids.contiguous(), "attention_mask": mask.contiguous(),
                   "last_hidden_state": out.contiguous()}, path)
        print(f"wrote {path}: max|out| = {out.abs().max():.3f}")


def fresh(name):
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def main():
    # ReLU, inner dim 32 != d_model 16.
    d = fresh("relu")
    model = T5EncoderModel(T5Config(**SMALL, feed_forward_proj="relu"))
    randomize(model, 1)
    model.save_pretrained(d)
    write_io(d, SMALL["vocab_size"], 10)

    # Gated GELU (T5 v1.1), sharded.
    d = fresh("gated_gelu")
    model = T5EncoderModel(T5Config(**SMALL, feed_forward_proj="gated-gelu"))
    randomize(model, 2)
    model.save_pretrained(d, max_shard_size="20KB")
    write_io(d, SMALL["vocab_size"], 20)

    # A full encoder-decoder in pytorch_model.bin with t5-11b's config keys, tiny sizes.
    d = fresh("t5_11b_tiny")
    full = T5ForConditionalGeneration(T5Config(**SMALL, feed_forward_proj="relu", num_decoder_layers=2))
    randomize(full, 3)
    # torch.save of the state dict, as older checkpoints ship it: the tied tables (shared,
    # encoder/decoder embed_tokens, lm_head) are one storage under several keys.
    torch.save(full.state_dict(), os.path.join(d, "pytorch_model.bin"))
    with open(os.path.join("configs", "t5-11b", "config.json")) as f:
        config = json.load(f)
    for key in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads"):
        config[key] = SMALL[key]
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    # Drop what save_pretrained wrote besides the weights and the config.
    for extra in os.listdir(d):
        if extra not in ("config.json", "pytorch_model.bin"):
            os.remove(os.path.join(d, extra))
    write_io(d, SMALL["vocab_size"], 30)

    # The tokenizer fixture's vocabulary, run end to end from prompts.
    d = fresh("with_tokenizer")
    tokenizer = T5TokenizerFast.from_pretrained(TOKENIZER)
    model = T5EncoderModel(T5Config(**dict(SMALL, vocab_size=len(tokenizer)), feed_forward_proj="relu"))
    randomize(model, 4)
    model.save_pretrained(d)
    model = T5EncoderModel.from_pretrained(d, dtype=torch.float32).eval()
    batch = tokenizer(PROMPTS, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    save_file({"input_ids": batch.input_ids.contiguous(), "attention_mask": batch.attention_mask.contiguous(),
               "last_hidden_state": out.contiguous()}, os.path.join(d, "encode_text.safetensors"))
    with open(os.path.join(d, "prompts.json"), "w") as f:
        json.dump(PROMPTS, f)
    for root, _, files in os.walk(OUT):
        for f in sorted(files):
            p = os.path.join(root, f)
            print(f"{p}: {os.path.getsize(p)} bytes")


if __name__ == "__main__":
    main()
