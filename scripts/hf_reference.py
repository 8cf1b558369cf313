#!/usr/bin/env python3
"""Hugging Face transformers' side of the SmolLM2 checks (float32, CPU).

  tokens: the chat prompts below through transformers' tokenizer and chat template, and the
          greedy continuation of each (`generate`, do_sample=False), with the logit margin
          between the best and second-best token at every step; written as JSON for
          `examples/tests/smollm2_reference.rs`.
  speed:  prefill tokens/s, and decode tokens/s at batch 1 and batch 8, measured the way
          `scripts/smollm2-speed.sh` measures our engine; printed as JSON on stdout.

Run by `scripts/smollm2-reference.sh`, which makes the virtual environment (torch, transformers,
gguf, accelerate from PyPI) and fetches the model.
"""

import argparse
import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

# Chats of our choosing: the first two have no system message, so the template inserts its
# default one and they share a prefix (what prefix caching serves); the third brings its own.
CHATS = [
    [{"role": "user", "content": "Describe the city of Paris: its history, its landmarks and its culture."}],
    [{"role": "user", "content": "Write a short poem about the sea."}],
    [
        {"role": "system", "content": "You are a concise assistant for programmers."},
        {"role": "user", "content": "Explain what a hash map is and when to use one."},
    ],
    [{"role": "user", "content": "List three benefits of regular exercise."}],
]


def load(model_path):
    folder, name = os.path.split(os.path.abspath(model_path))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    return tok, model


def tokens(tok, model, max_new):
    out = []
    for chat in CHATS:
        text = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            gen = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=False,
                max_new_tokens=max_new,
                output_scores=True,
                return_dict_in_generate=True,
                pad_token_id=tok.eos_token_id,
            )
        new = gen.sequences[0, len(ids):].tolist()
        margins = []
        for scores in gen.scores:
            top = torch.topk(scores[0].float(), 2).values
            margins.append(float(top[0] - top[1]))
        out.append(
            {
                "messages": chat,
                "prompt": text,
                "prompt_ids": ids,
                "generated_ids": new,
                "generated_text": tok.decode(new),
                "margins": margins,
            }
        )
    return out


def speed(tok, model, prompt_len, decode_steps):
    """Prefill and decode throughput with the KV cache, as a serving loop would run it."""
    torch.manual_seed(0)
    vocab = model.config.vocab_size
    result = {"threads": torch.get_num_threads()}
    with torch.no_grad():
        prompt = torch.randint(100, vocab, (1, prompt_len))
        model(prompt)  # warm-up
        t = time.perf_counter()
        model(prompt)
        result["prefill_tokens_per_s"] = prompt_len / (time.perf_counter() - t)
        for batch in (1, 8):
            ids = torch.randint(100, vocab, (batch, prompt_len))
            out = model(ids, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1:].argmax(-1)
            # one untimed step, then the timed ones
            out = model(nxt, past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
            t = time.perf_counter()
            for _ in range(decode_steps):
                out = model(nxt, past_key_values=past, use_cache=True)
                past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
            result[f"decode_b{batch}_tokens_per_s"] = batch * decode_steps / (time.perf_counter() - t)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["tokens", "speed"])
    ap.add_argument("--model", required=True, help="the .gguf file")
    ap.add_argument("--out", help="tokens: where to write the JSON (default: stdout)")
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--decode-steps", type=int, default=32)
    a = ap.parse_args()
    tok, model = load(a.model)
    if a.mode == "tokens":
        data = {
            "model": os.path.basename(a.model),
            "transformers": __import__("transformers").__version__,
            "torch": torch.__version__,
            "dtype": "float32",
            "chats": tokens(tok, model, a.max_new),
        }
        text = json.dumps(data, indent=1, ensure_ascii=False) + "\n"
        if a.out:
            with open(a.out, "w", encoding="utf-8") as f:
                f.write(text)
        else:
            sys.stdout.write(text)
    else:
        print(json.dumps(speed(tok, model, a.prompt_len, a.decode_steps)))


if __name__ == "__main__":
    main()
