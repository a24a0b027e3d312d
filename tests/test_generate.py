"""``xlstm_jax.generate``: one compiled decode loop for both architectures."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import perturbed
from xlstm_jax import generate
from xlstm_jax.models.xlstm_large import xLSTMLarge, xLSTMLargeConfig
from xlstm_jax.models.xlstm_lm import mLSTMLayerConfig, sLSTMLayerConfig, xLSTMLMConfig, xLSTMLMModel

VOCAB = 48


@functools.cache
def _model(arch: str):
    if arch == "xlstm_lm":
        cfg = xLSTMLMConfig(vocab_size=VOCAB, embedding_dim=32, num_blocks=2, slstm_at=(1,), chunk_size=4,
                            mlstm=mLSTMLayerConfig(num_heads=2), slstm=sLSTMLayerConfig(num_heads=2))  # fmt: skip
        return perturbed(xLSTMLMModel(cfg, rngs=nnx.Rngs(0)), scale=0.2)
    cfg = xLSTMLargeConfig(embedding_dim=32, num_heads=2, num_blocks=2, vocab_size=VOCAB, chunk_size=4)
    return perturbed(xLSTMLarge(cfg, rngs=nnx.Rngs(0)), scale=0.2)


@functools.cache
def _jitted_call(arch: str):
    """``model(ids, state=state, return_state=True)`` of ``_model(arch)`` under one jit, shared by the
    tests (compiled once per input shape, not once per reference run)."""
    model = _model(arch)
    return jax.jit(lambda ids, state: model(ids, state=state, return_state=True))


def _greedy_reference(arch: str, prompt, n: int) -> list[int]:
    """Token by token with Python control flow: prefill the prompt, then argmax steps."""
    call = _jitted_call(arch)
    logits, state = call(jnp.asarray([prompt]), None)
    out = []
    for _ in range(n):
        token = int(jnp.argmax(logits[0, -1]))
        out.append(token)
        logits, state = call(jnp.asarray([[token]]), state)
    return out


ARCHS = ["xlstm_lm", "xlstm_large"]


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_batch_of_different_lengths_equals_each_prompt_alone(arch):
    model = _model(arch)
    prompts = [[3, 7, 1, 9, 4, 4, 2], [5], [8, 8, 2, 30]]
    out = generate(model, prompts, 6)
    assert out.tokens.shape == (3, 6) and out.tokens.dtype == jnp.int32
    np.testing.assert_array_equal(out.lengths, [6, 6, 6])
    for row, prompt in enumerate(prompts):
        assert np.asarray(out.tokens[row]).tolist() == _greedy_reference(arch, prompt, 6), f"row {row}"


@pytest.mark.parametrize("arch", ARCHS)
def test_eos_stops_each_row_and_pads(arch):
    model = _model(arch)
    prompts = [[3, 7, 1], [5, 6]]
    free = [_greedy_reference(arch, p, 8) for p in prompts]
    eos = free[0][2]  # the third token of row 0 becomes the end
    out = generate(model, prompts, 8, eos_id=eos, pad_id=0)
    for row, ref in enumerate(free):
        stop = ref.index(eos) + 1 if eos in ref else 8
        assert int(out.lengths[row]) == stop
        assert np.asarray(out.tokens[row, :stop]).tolist() == ref[:stop]
        assert np.all(np.asarray(out.tokens[row, stop:]) == 0)


def test_sampling_is_reproducible_and_top_k_1_is_greedy():
    model = _model("xlstm_lm")
    prompts = [[3, 7, 1], [5, 6, 2]]
    key = jax.random.key(3)
    a = generate(model, prompts, 10, temperature=1.0, rng=key)
    b = generate(model, prompts, 10, temperature=1.0, rng=key)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    c = generate(model, prompts, 10, temperature=1.0, rng=jax.random.key(4))
    assert not np.array_equal(a.tokens, c.tokens)
    greedy = generate(model, prompts, 10)
    np.testing.assert_array_equal(generate(model, prompts, 10, temperature=0.7, top_k=1, rng=key).tokens, greedy.tokens)
    np.testing.assert_array_equal(generate(model, prompts, 10, temperature=0.7, top_p=1e-6, rng=key).tokens,
                                  greedy.tokens)  # fmt: skip
    nucleus = generate(model, prompts, 10, temperature=1.0, top_p=0.5, top_k=5, rng=key)
    assert np.all((np.asarray(nucleus.tokens) >= 0) & (np.asarray(nucleus.tokens) < VOCAB))


def test_padded_array_prompts_and_zero_new_tokens():
    model = _model("xlstm_large")
    ids = np.array([[3, 7, 1, 9], [5, 6, 0, 0]])
    out = generate(model, ids, 5, prompt_lengths=[4, 2])
    ref = generate(model, [[3, 7, 1, 9], [5, 6]], 5)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    empty = generate(model, ids, 0)
    assert empty.tokens.shape == (2, 0) and np.all(np.asarray(empty.lengths) == 0)


def test_memory_is_constant_in_the_generated_length():
    """The compiled decode loop's temporary memory does not grow with the number of steps
    (only the (B, steps) output buffer does)."""
    from xlstm_jax.generation import _loop
    from xlstm_jax.generation._generate import _prepare

    model = _model("xlstm_lm")
    p = _prepare(model, [[1, 2, 3, 4]] * 2, 8, 0.0, None, None, None, (), 0, None, None, True)

    def temp_bytes(n):
        lowered = _loop.decode.lower(p.graphdef, p.params, p.carry, p.settings, steps=n)
        return lowered.compile().memory_analysis().temp_size_in_bytes

    small, large = temp_bytes(8), temp_bytes(4096)
    assert large - small <= 2 * (4096 - 8) * 4 * 2, (small, large)  # at most the output buffer, twice


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(prompt_ids=[[1, 2], []], max_new_tokens=3), "empty prompts at rows \\[1\\]"),
        (dict(prompt_ids=[[1, VOCAB]], max_new_tokens=3), f"token id {VOCAB} at prompt_ids\\[0, 1\\] is outside"),
        (dict(prompt_ids=[[1, -1]], max_new_tokens=3), "token id -1"),
        (dict(prompt_ids=[[1, 2]], max_new_tokens=-1), "max_new_tokens must be an integer >= 0"),
        (dict(prompt_ids=[[1, 2]], max_new_tokens=2.5), "max_new_tokens must be an integer >= 0"),
        (dict(prompt_ids=np.ones((2, 3), np.float32), max_new_tokens=2), "must hold integer token ids"),
        (dict(prompt_ids=[[1.5, 2.0]], max_new_tokens=2), "must hold integer token ids"),
        (dict(prompt_ids=[[1, 2]], max_new_tokens=2, temperature=1.0), "needs rng"),
        (
            dict(prompt_ids=[[1, 2]], max_new_tokens=2, temperature=-1.0),
            "temperature must be a finite number >= 0, got -1.0",
        ),
        (
            dict(prompt_ids=[[1, 2]], max_new_tokens=2, top_k=0),
            "top_k must be an integer >= 1 and <= 48 or None, got 0",
        ),
        (
            dict(prompt_ids=[[1, 2]], max_new_tokens=2, top_p=1.5),
            "top_p must be a finite number > 0 and <= 1 or None, got 1.5",
        ),
        (dict(prompt_ids=[[1, 2]], max_new_tokens=2, eos_id=VOCAB), "eos_id must be a token id"),
        (
            dict(prompt_ids=[[1, 2]], max_new_tokens=2, temperature=float("nan"), rng=jax.random.key(0)),
            "temperature must be a finite number >= 0, got nan",
        ),
        (
            dict(prompt_ids=[[1, 2]], max_new_tokens=2, temperature=float("inf"), rng=jax.random.key(0)),
            "temperature must be a finite number >= 0, got inf",
        ),
        (
            dict(prompt_ids=[[1, 2]], max_new_tokens=2, temperature=1.0, top_p=float("nan"), rng=jax.random.key(0)),
            "top_p must be a finite number > 0 and <= 1 or None, got nan",
        ),
        (dict(prompt_ids=[[1, 2]], max_new_tokens=True), "max_new_tokens must be an integer >= 0, got True"),
        (dict(prompt_ids=[[1, 2]]), "max_new_tokens must be given"),
        (dict(prompt_ids=np.ones((2, 3), np.int32), max_new_tokens=2, prompt_lengths=[3, 4]), "<= the padded width"),
    ],
)
def test_bad_input_is_reported_before_compiling(kwargs, message, monkeypatch):
    from xlstm_jax.generation import _loop

    for name in ("prefill", "decode"):
        monkeypatch.setattr(_loop, name, lambda *a, **k: pytest.fail("compiled despite bad input"))
    with pytest.raises(ValueError, match=message):
        generate(_model("xlstm_lm"), **kwargs)


def test_greedy_matches_hugging_face_generate():
    """Same weights in HF ``xLSTMForCausalLM`` and ours: identical greedy tokens."""
    torch = pytest.importorskip("torch", reason="the Hugging Face comparison needs torch")
    from test_hf_checkpoint import build_hf_and_ours

    hf_model, ours, _ = build_hf_and_ours(seed=5)
    prompt = np.random.default_rng(5).integers(0, ours.config.vocab_size, size=(2, 7))
    with torch.no_grad():
        ref = hf_model.generate(torch.from_numpy(prompt), max_new_tokens=12, do_sample=False,
                                min_new_tokens=12, pad_token_id=None, eos_token_id=None)  # fmt: skip
    out = generate(ours, prompt, 12)
    np.testing.assert_array_equal(np.asarray(out.tokens), ref[:, 7:].numpy())


def test_text_prompts_with_a_tokenizer_return_text():
    from test_hub import word_tokenizer

    model, tok = _model("xlstm_large"), word_tokenizer(VOCAB)
    out = generate(model, ["w3 w7 w1", "w5"], 6, tokenizer=tok)
    ref = generate(model, [[3, 7, 1], [5]], 6)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    assert out.text == [" ".join(f"w{t}" for t in row) for row in np.asarray(ref.tokens).tolist()]
    single = generate(model, "w3 w7 w1", 6, tokenizer=tok)
    assert single.text == out.text[:1]
    assert generate(model, [[3, 7, 1]], 6, tokenizer=tok).text == out.text[:1]  # ids in, text out
    with pytest.raises(ValueError, match="the prompt is text: pass tokenizer="):
        generate(model, "w3 w7", 6)


def test_eos_list_and_the_models_generation_config():
    from xlstm_jax.generation import GenerationConfig

    model = _model("xlstm_large")
    free = _greedy_reference("xlstm_large", [3, 7, 1], 8)
    first, second = free[4], free[1]  # any of the ids ends the row: the earliest one wins
    stop = min(free.index(first), free.index(second)) + 1
    out = generate(model, [[3, 7, 1]], 8, eos_id=[first, second])
    assert int(out.lengths[0]) == stop and np.asarray(out.tokens[0, :stop]).tolist() == free[:stop]
    model.generation_config = GenerationConfig(eos_token_id=(first, second), pad_token_id=VOCAB - 1)
    try:
        dflt = generate(model, [[3, 7, 1]], 8)
        np.testing.assert_array_equal(dflt.tokens[0, :stop], out.tokens[0, :stop])
        assert np.all(np.asarray(dflt.tokens[0, stop:]) == VOCAB - 1)  # the model's pad id
        assert int(generate(model, [[3, 7, 1]], 8, eos_id=()).lengths[0]) == 8  # () switches it off
    finally:
        del model.generation_config


@pytest.mark.parametrize("arch", ARCHS)
def test_bucketed_and_exact_shapes_give_the_same_tokens(arch):
    """Left-padding the prompts to a bucket (a state reset at each prompt's start) and a
    larger step bucket change nothing: greedy tokens equal the unpadded, exact-size run."""
    model = _model(arch)
    for prompts in (
        [[3, 7, 1, 9, 4, 4, 2], [5], [8, 8, 2, 30]],
        [[3, 7, 1, 9, 4, 4, 2, 11, 12, 13, 1, 2, 3, 4, 5, 6, 7]],
    ):
        bucketed = generate(model, prompts, 5)
        exact = generate(model, prompts, 5, buckets=False)
        np.testing.assert_array_equal(bucketed.tokens, exact.tokens)
        np.testing.assert_array_equal(bucketed.lengths, exact.lengths)


def test_new_settings_and_lengths_in_a_bucket_do_not_recompile():
    from xlstm_jax.generation import _loop

    model = _model("xlstm_large")
    key = jax.random.key(0)
    generate(model, [[1, 2, 3]], 5, temperature=0.5, top_k=3, rng=key)
    sizes = _loop.prefill._cache_size(), _loop.decode._cache_size()
    generate(model, [[1, 2, 3, 4, 5, 6, 7]], 9, temperature=1.3, top_k=7, top_p=0.9, rng=key)
    generate(model, [[4, 5]], 16, eos_id=[3, 4], rng=key)
    generate(model, [[4, 5, 9, 9, 9]], 1, temperature=0.0, top_p=0.5, eos_id=7, pad_id=2, rng=key)
    assert (_loop.prefill._cache_size(), _loop.decode._cache_size()) == sizes
    generate(model, [[1] * 40] * 3, 5)  # a new shape (B=3, width bucket 64): one more prefill program
    assert _loop.prefill._cache_size() == sizes[0] + 1


def test_stream_chunks_join_to_generate():
    from xlstm_jax.generation import stream

    model = _model("xlstm_lm")
    prompts, key = [[3, 7, 1], [5, 6]], jax.random.key(1)
    full = generate(model, prompts, 11, temperature=1.0, top_k=10, rng=key, eos_id=5)
    chunks = list(stream(model, prompts, 11, chunk_size=4, temperature=1.0, top_k=10, rng=key, eos_id=5))
    assert [c.tokens.shape[1] for c in chunks][:-1] == [4] * (len(chunks) - 1)
    np.testing.assert_array_equal(np.concatenate([c.tokens for c in chunks], axis=1), full.tokens[:, : 4 * len(chunks)])
    np.testing.assert_array_equal(sum(np.asarray(c.lengths) for c in chunks), full.lengths)


def test_xlstm_large_decodes_under_a_mesh():
    """``generate`` builds the 7B model's decode form (per-block fused weights) under ``jax.set_mesh``
    too, where an abstract build would turn the parameters' logical names into mesh axes; the
    tokens equal the run without a mesh."""
    from jax.sharding import AxisType

    from xlstm_jax import backends

    model, prompts = _model("xlstm_large"), [[3, 7, 1, 9], [5]]
    ref = generate(model, prompts, 4)
    mesh = jax.make_mesh((1,), ("data",), axis_types=(AxisType.Auto,))
    with jax.set_mesh(mesh), backends.axis_rules({"batch": "data"}):
        out = generate(model, prompts, 4)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
