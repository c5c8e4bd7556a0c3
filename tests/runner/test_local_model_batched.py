"""Batched inference in the transformers backend equals the unbatched path, on the CPU.

Tiny random models (GPT-2 with learned positions, Llama with rotary ones) are built on the
spot in float32; every batched result is compared with a plain one-request forward pass or
`generate` call on the same weights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

# torch's Linux wheels on PyPI bring the CUDA libraries (6.3 GB installed), so `make test`'s
# virtualenv leaves them out and skips this file; `make test-local-model` (run by .ci/run after
# `make test`) installs them in .venv-local-model and sets EVAL_REQUIRE_TORCH, which turns a
# missing module into a failure.
if os.environ.get("EVAL_REQUIRE_TORCH"):
    import tokenizers
    import torch
    import transformers
else:
    torch = pytest.importorskip("torch", reason="make test-local-model installs torch")
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")

from evaluation_runner.config import BenchmarkConfig, DatasetConfig
from evaluation_runner.datasets import Sample
from evaluation_runner.local_model import LocalModel
from evaluation_runner.tasks import Generation, predict_all, predict_batched

WORDS = ["the", "sky", "is", "blue", "green", "red", "grass", "sun", "moon", "question",
         "answer", ":", "?", ".", "what", "colour", "of", ",", "and", "a", "very", "bright",
         "dark", "night", "day", "light", "Question", "Answer", "\n", "stop"]


def save_tiny_model(target: Path, kind: str) -> Path:
    vocab = {"[UNK]": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(dict.fromkeys(WORDS))}}
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    core.decoder = tokenizers.decoders.WordPiece()  # joins tokens with spaces
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", eos_token="<eos>", pad_token="<eos>")
    tokenizer.save_pretrained(target)
    torch.manual_seed(0)
    if kind == "gpt2":
        model: Any = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=len(vocab), n_positions=128, n_embd=32, n_layer=2, n_head=2,
            eos_token_id=1, bos_token_id=1))
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            eos_token_id=1, bos_token_id=1, pad_token_id=1))
    model.to(torch.float32).save_pretrained(target)
    return target


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> Any:
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    net = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32).eval()
    return tokenizer, net


def plain_loglikelihood(reference: Any, context: str, continuation: str) -> float:
    tokenizer, net = reference
    ctx = tokenizer(context)["input_ids"] or [1]
    cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = net(torch.tensor([ctx + cont])).logits[0].log_softmax(-1)
    return sum(float(logits[len(ctx) + i - 1, token]) for i, token in enumerate(cont))


def plain_generate(reference: Any, prompt: str, max_tokens: int) -> str:
    tokenizer, net = reference
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        output = net.generate(**inputs, max_new_tokens=max_tokens, do_sample=False,
                              pad_token_id=1)
    text: str = tokenizer.decode(output[0][inputs["input_ids"].shape[1]:],
                                 skip_special_tokens=True)
    return text


REQUESTS = [
    ("question : what colour is the sky ? answer :", " blue"),
    ("question : what colour is the sky ? answer :", " green and red"),
    ("question : what colour is the sky ? answer :", " a very dark night"),
    ("the grass is", " green"),
    ("the grass is", " green"),  # a duplicate
    ("the sun is a very bright light and the moon is", " dark"),
    ("the sun is a very bright light and the moon is", " light of the night"),
    ("", " the sky"),  # no context: starts from the BOS/EOS token
    ("day", ""),  # empty continuation
]


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_batched_loglikelihoods_equal_one_pass_per_request(
        model_dir: Path, reference: Any, batch_size: int) -> None:
    model = LocalModel(model_dir, "tiny", max_batch_size=batch_size)
    got = model.loglikelihood_many(REQUESTS)
    expected = [plain_loglikelihood(reference, c, x) for c, x in REQUESTS]
    assert got == pytest.approx(expected, abs=1e-4)
    assert got[3] == got[4] and got[-1] == 0.0
    # The single-request interface goes through the same path.
    assert model.loglikelihood(*REQUESTS[1]) == pytest.approx(expected[1], abs=1e-4)


def test_single_token_choices_need_only_the_context_pass(model_dir: Path,
                                                        reference: Any) -> None:
    model = LocalModel(model_dir, "tiny")
    requests = [("what colour is the sky ?", f" {w}") for w in ("blue", "green", "red")]
    requests += [("the grass is", f" {w}") for w in ("blue", "green")]
    assert model.loglikelihood_many(requests) == pytest.approx(
        [plain_loglikelihood(reference, c, x) for c, x in requests], abs=1e-4)


PROMPTS = ["the sky is", "question : what colour is the grass ? answer :", "the sun",
           "a very bright light and a very dark night and the moon is", "day"]


@pytest.mark.parametrize("batch_size", [1, 2, 64])
def test_batched_greedy_generation_equals_one_prompt_at_a_time(
        model_dir: Path, reference: Any, batch_size: int) -> None:
    model = LocalModel(model_dir, "tiny", max_batch_size=batch_size)
    got = model.generate_many(PROMPTS, max_tokens=6, temperature=0.0, seed=1)
    assert got == [plain_generate(reference, p, 6) for p in PROMPTS]
    assert model.generate(PROMPTS[0], max_tokens=6, temperature=0.0, seed=5) == got[0]


def test_each_row_stops_at_its_own_stop_sequences(model_dir: Path, reference: Any) -> None:
    model = LocalModel(model_dir, "tiny")
    full = [plain_generate(reference, p, 8) for p in PROMPTS[:3]]
    first_words = [text.split()[1] if len(text.split()) > 1 else "never" for text in full]
    stops = [[first_words[0]], [], ["never-appears"]]
    got = model.generate_many(PROMPTS[:3], max_tokens=8, temperature=0.0, seed=1, stop=stops)
    assert got[0] == full[0].split(first_words[0], 1)[0]
    assert got[1:] == full[1:]


def test_out_of_memory_halves_the_batch_and_keeps_the_results(
        model_dir: Path, reference: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    model = LocalModel(model_dir, "tiny", max_batch_size=8)
    forward = model.model.forward
    batches: list[int] = []

    def limited(*args: Any, **kwargs: Any) -> Any:
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        batches.append(int(ids.shape[0]))
        if ids.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return forward(*args, **kwargs)

    monkeypatch.setattr(model.model, "forward", limited)
    distinct = REQUESTS[3:]
    got = model.loglikelihood_many(distinct)
    assert model.batch_size <= 2 and max(batches) > 2  # it tried bigger ones first
    assert got == pytest.approx([plain_loglikelihood(reference, c, x) for c, x in distinct],
                                abs=1e-4)
    with pytest.raises(ValueError, match="boom"):
        monkeypatch.setattr(model.model, "forward",
                            lambda *a, **k: (_ for _ in ()).throw(ValueError("boom")))
        model.loglikelihood_many(REQUESTS[:1])


def test_the_runner_gets_the_same_answers_batched_and_one_by_one(model_dir: Path) -> None:
    model = LocalModel(model_dir, "tiny", max_batch_size=4)
    samples = [Sample(index=i, prompt=prompt, reference="blue",
                      choices=("blue", "green and red", "a very dark night"))
               for i, prompt in enumerate(["what colour is the sky ?", "the grass is ?",
                                           "the sun is ?", "the night is ?", "day ?"])]
    benchmark = BenchmarkConfig(name="mc", dataset=DatasetConfig(uri="/dev/null"),
                                task="multiple-choice", metrics=("accuracy",))
    generation = Generation(8, 0.0, 1)
    batched = predict_batched(model, benchmark, samples, (), generation, chunk=2)
    one_by_one = predict_all(model, benchmark, samples, (), generation, 3)
    assert [p.prediction for p in batched] == [p.prediction for p in one_by_one]
    for a, b in zip(batched, one_by_one, strict=True):
        assert a.choice_logprobs == pytest.approx(b.choice_logprobs, abs=1e-5)
    generation_benchmark = BenchmarkConfig(name="gen", dataset=DatasetConfig(uri="/dev/null"),
                                           task="generation", metrics=("bleu",))
    texts = [Sample(index=i, prompt=p, reference="x") for i, p in enumerate(PROMPTS)]
    assert [p.prediction for p in predict_batched(model, generation_benchmark, texts, (),
                                                  Generation(5, 0.0, 1))] == \
        [p.prediction for p in predict_all(model, generation_benchmark, texts, (),
                                           Generation(5, 0.0, 1), 2)]
