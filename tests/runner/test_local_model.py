"""The transformers backend (model.source): a tiny random GPT-2 built on the spot, no download.

Needs torch, transformers and a CUDA device; skipped cleanly where any is missing (the CPU
runner image has none of them)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from evaluation_runner.config import BenchmarkConfig, DatasetConfig  # noqa: E402
from evaluation_runner.datasets import Sample  # noqa: E402
from evaluation_runner.errors import ConfigurationError  # noqa: E402
from evaluation_runner.local_model import LocalModel  # noqa: E402
from evaluation_runner.tasks import Generation, predict_all  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

WORDS = ["the", "sky", "is", "blue", "green", "red", "grass", "sun", "moon", "question",
         "answer", ":", "?", ".", "what", "colour", "of", ",", "and"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("tiny-gpt2")
    vocab = {"[UNK]": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(dict.fromkeys(WORDS))}}
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    core.decoder = tokenizers.decoders.WordPiece()  # joins tokens with spaces
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", eos_token="<eos>", pad_token="<eos>")
    tokenizer.save_pretrained(target)
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=len(vocab), n_positions=64, n_embd=32,
                                     n_layer=2, n_head=2, eos_token_id=1, bos_token_id=1)
    transformers.GPT2LMHeadModel(config).save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def model(model_dir: Path) -> LocalModel:
    return LocalModel(model_dir, "tiny")


def reference_loglikelihood(model_dir: Path, context: str, continuation: str) -> float:
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    net = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ctx = tokenizer(context)["input_ids"]
    cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = ctx + cont
    with torch.no_grad():
        logits = net(torch.tensor([ids])).logits[0].log_softmax(-1)
    return sum(float(logits[len(ctx) + i - 1, token]) for i, token in enumerate(cont))


def test_the_model_runs_on_the_gpu(model: LocalModel) -> None:
    assert model.device == "cuda"
    assert next(model.model.parameters()).device.type == "cuda"


def test_loglikelihood_sums_the_continuation_tokens(model: LocalModel, model_dir: Path) -> None:
    for context, continuation in [("question : what colour is the sky ? answer :", " blue"),
                                  ("the grass is", " green and red")]:
        got = model.loglikelihood(context, continuation)
        assert got == pytest.approx(reference_loglikelihood(model_dir, context, continuation),
                                    abs=1e-3)
        assert got < 0


def test_greedy_generation_is_deterministic_and_bounded(model: LocalModel) -> None:
    first = model.generate("the sky is", max_tokens=5, temperature=0.0, seed=1)
    again = model.generate("the sky is", max_tokens=5, temperature=0.0, seed=99)
    assert first == again
    assert 0 < len(first.split()) <= 5
    assert all(word in WORDS or word == "[UNK]" for word in first.split())


def test_multiple_choice_picks_the_most_likely_choice(model: LocalModel) -> None:
    samples = [Sample(index=i, prompt=prompt, reference="blue",
                      choices=("blue", "green", "red"))
               for i, prompt in enumerate(["what colour is the sky ?", "the grass is ?"])]
    benchmark = BenchmarkConfig(name="mc", dataset=DatasetConfig(uri="/dev/null"),
                                task="multiple-choice", metrics=("accuracy",))
    predictions = predict_all(model, benchmark, samples, (), Generation(8, 0.0, 1), 4)
    for prediction in predictions:
        scores = prediction.choice_logprobs
        choices = prediction.sample.choices
        assert scores is not None and len(scores) == 3 and choices is not None
        assert prediction.prediction == choices[scores.index(max(scores))]


def test_a_directory_without_a_model_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"model\.source"):
        LocalModel(tmp_path, "missing")
