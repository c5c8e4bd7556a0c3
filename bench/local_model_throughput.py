"""Requests per second: the in-pod transformers backend against a plain batched forward pass.

The same random-initialised causal LM (no weights to download) and the same multiple-choice
log-likelihood requests go through three paths:

  baseline   padded batches of --batch requests, one forward pass each, on the same model:
             what the hardware does with no bookkeeping (the figure to approach)
  backend    `LocalModel.loglikelihood_many`: tokenising, de-duplication, length-sorted
             batches, each question's context computed once, OOM-aware batch size
  one-by-one `LocalModel.loglikelihood` per request (the path the runner used before)

It also checks that the backend's choice (argmax over each question's choices) agrees with
the one-by-one path, and prints generation prompts/s batched vs one at a time.

    .venv-local-model/bin/python bench/local_model_throughput.py      # tiny model, CPU
    .venv-local-model/bin/python bench/local_model_throughput.py --size 1b --dtype bfloat16 \
        --questions 200                                                # GPU

(.venv-local-model is `make test-local-model`'s virtualenv, the one with torch.)
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "runner-image"), str(ROOT)]

SIZES = {  # hidden, layers, heads, kv heads, intermediate
    "tiny": (64, 2, 4, 2, 128),
    "small": (256, 4, 8, 4, 688),
    "1b": (2048, 22, 32, 4, 5632),  # TinyLlama-1.1B's shape
}
WORDS = [f"w{i}" for i in range(2000)]


def build_model(target: Path, size: str, dtype: str) -> None:
    import tokenizers
    import torch
    import transformers

    vocab = {"[UNK]": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    core.decoder = tokenizers.decoders.WordPiece()
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", eos_token="<eos>",
        pad_token="<eos>").save_pretrained(target)
    hidden, layers, heads, kv_heads, intermediate = SIZES[size]
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=1024, eos_token_id=1, bos_token_id=1, pad_token_id=1))
    model.to(getattr(torch, dtype)).save_pretrained(target)


def requests_for(questions: int, choices: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    requests = []
    for _ in range(questions):
        context = " ".join(rng.choice(WORDS) for _ in range(rng.randint(80, 200)))
        for _ in range(choices):
            answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
            requests.append((f"Question: {context}\nAnswer:", f" {answer}"))
    return requests


def baseline(model: Any, requests: list[tuple[str, str]], batch: int) -> float:
    """Padded batches through the model, nothing else: seconds taken."""
    import torch

    encoded = [model._ids(c, x) for c, x in requests]
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(encoded), batch):
            rows = [c + x for c, x in encoded[start:start + batch]]
            width = max(map(len, rows))
            ids = torch.full((len(rows), width), model.pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, row in enumerate(rows):
                ids[i, :len(row)] = torch.tensor(row)
                mask[i, :len(row)] = 1
            logits = model.model(input_ids=ids.to(model.device),
                                 attention_mask=mask.to(model.device)).logits
            logits.float().log_softmax(-1)
            if model.device == "cuda":
                torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--choices", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--one-by-one", type=int, default=200,
                        help="requests timed one at a time (0: skip)")
    parser.add_argument("--prompts", type=int, default=32, help="generation prompts (0: skip)")
    args = parser.parse_args()

    import torch
    from evaluation_runner.local_model import LocalModel

    with tempfile.TemporaryDirectory() as folder:
        build_model(Path(folder), args.size, args.dtype)
        model = LocalModel(Path(folder), "bench", max_batch_size=args.batch)
    device = torch.cuda.get_device_name() if model.device == "cuda" else "CPU"
    requests = requests_for(args.questions, args.choices, seed=1)
    print(f"model: random Llama '{args.size}' {args.dtype} on {device}; {args.questions} "
          f"questions x {args.choices} choices = {len(requests)} requests, contexts 80-200 "
          f"words; batch {args.batch}; torch {torch.__version__}")

    model.loglikelihood_many(requests[:8])  # warm-up
    base = baseline(model, requests, args.batch)
    started = time.perf_counter()
    batched = model.loglikelihood_many(requests)
    if model.device == "cuda":
        torch.cuda.synchronize()
    ours = time.perf_counter() - started
    print(f"plain batched forward : {len(requests) / base:8.1f} requests/s")
    print(f"LocalModel batched    : {len(requests) / ours:8.1f} requests/s "
          f"({base / ours * 100:.0f}% of plain; batch size now {model.batch_size})")
    if args.one_by_one:
        some = requests[:args.one_by_one]
        started = time.perf_counter()
        single = [model.loglikelihood(c, x) for c, x in some]
        alone = time.perf_counter() - started
        print(f"LocalModel one by one : {len(some) / alone:8.1f} requests/s "
              f"({len(some)} requests)")
        questions = len(some) // args.choices
        agree = sum(
            max(range(args.choices), key=lambda j: single[q * args.choices + j]) ==
            max(range(args.choices), key=lambda j: batched[q * args.choices + j])
            for q in range(questions))
        worst = max(abs(a - b) for a, b in zip(single, batched, strict=False))
        print(f"argmax agreement      : {agree}/{questions} questions; largest "
              f"log-likelihood difference {worst:.2e}")
    if args.prompts:
        prompts = [c for c, _ in requests[::args.choices][:args.prompts]]
        started = time.perf_counter()
        model.generate_many(prompts, max_tokens=16, temperature=0.0, seed=1)
        together = time.perf_counter() - started
        started = time.perf_counter()
        for prompt in prompts[:8]:
            model.generate(prompt, max_tokens=16, temperature=0.0, seed=1)
        apart = (time.perf_counter() - started) / min(8, len(prompts)) * len(prompts)
        print(f"generation (16 tokens): {len(prompts) / together:8.1f} prompts/s batched, "
              f"{len(prompts) / apart:.1f} prompts/s one at a time")


if __name__ == "__main__":
    main()
