"""Data pipeline: embedded tasks, sources, packing, sharding, resume, tokenizers, preprocess CLI."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xlstm_jax.train.data import (
    ByteTokenizer,
    DataConfig,
    HFTokenizer,
    PackIterDataset,
    generate_example,
    make_eval_dataset,
    make_train_dataset,
    pack_documents,
    row_to_example,
    vocab_size,
)
from xlstm_jax.train.data.preprocess import preprocess
from xlstm_jax.train.data.sources import ArrayRecordSource, TextSource, TokenFileSource

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["hello world", "héllo wörld, 日本語 🎉", "a\nsecond line", "x" * 40, "short"]


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _write_token_corpus(tmp_path: Path, docs: list[np.ndarray], name: str = "corpus") -> str:
    """docs (each (n,) ints) as a uint16 token file with offsets and metadata, like preprocess writes."""
    prefix = tmp_path / name
    np.concatenate(docs).astype(np.uint16).tofile(f"{prefix}.bin")
    np.save(f"{prefix}.offsets.npy", np.cumsum([0] + [len(d) for d in docs]).astype(np.int64))
    meta = {"dtype": "uint16", "vocab_size": 1000, "offsets": f"{name}.offsets.npy"}
    Path(f"{prefix}.json").write_text(json.dumps(meta))
    return f"{prefix}.bin"


# ----------------------------------------------------------------------------- config


def test_config_validation_names_field_and_accepted_values():
    with pytest.raises(ValueError, match=r"DataConfig.kind must be one of 'parity'.*got 'parityy'"):
        DataConfig(kind="parityy")
    with pytest.raises(ValueError, match=r"num_workers must be an integer >= 0, got -1"):
        DataConfig(num_workers=-1)
    with pytest.raises(ValueError, match=r"shuffle must be True or False, got 1"):
        DataConfig(shuffle=1)
    with pytest.raises(ValueError, match=r"train_max_len must be an integer >= train_min_len=3, got 2"):
        DataConfig(kind="parity", train_max_len=2)
    with pytest.raises(ValueError, match=r"DataConfig.path must be .*\(required for kind='tokens'\), got None"):
        DataConfig(kind="tokens")
    with pytest.raises(ValueError, match=r"tokenizer must be 'byte'.*got 'gpt2'"):
        DataConfig(kind="text", path="a.txt", tokenizer="gpt2")
    with pytest.raises(ValueError, match=r"train_min_len must be an integer >= 32 for kind='mqar'.*got 10"):
        DataConfig(kind="mqar", num_kv_pairs=8, train_min_len=10)
    with pytest.raises(ValueError, match=r"unknown key\(s\) DataConfig\.sequence_len; known: .*kind"):
        DataConfig.from_dict({"kind": "parity", "sequence_len": 3})
    cfg = DataConfig.from_dict({"kind": "text", "path": ["a.txt", "b.jsonl"], "seed": 3})
    assert cfg.path == ("a.txt", "b.jsonl") and DataConfig.from_dict(cfg.to_dict()) == cfg
    assert DataConfig(kind="parity").eval_min_len > DataConfig(kind="parity").train_max_len - 1
    with pytest.raises(ValueError, match=r"eval_max_len=256.*seq_len \+ 1 = 65"):
        make_eval_dataset(DataConfig(kind="parity"), seq_len=64, batch_size=2)
    with pytest.raises(ValueError, match=r"global_batch_size=5.*multiple of process_count=2"):
        make_train_dataset(DataConfig(kind="parity"), seq_len=64, global_batch_size=5, process_index=0, process_count=2)


# ----------------------------------------------------------------------------- embedded tasks


def _modular_reference(tokens: np.ndarray, modulus: int) -> int:
    """Re-evaluate "n op n ... =" with Python's own operator precedence."""
    text = "".join(str(t - 5) if t >= 5 else {1: "+", 2: "-", 3: "*"}[t] for t in tokens[:-1])
    return eval(text) % modulus  # the text holds only digits and + - *


@pytest.mark.parametrize("kind", ["parity", "even_pairs", "modular_arithmetic", "cycle_navigation", "mqar"])
def test_task_answers_lengths_and_layout(kind):
    cfg = DataConfig(kind=kind, num_kv_pairs=4, mqar_vocab=64)
    vocab = vocab_size(cfg)
    for split in ("train", "eval"):
        lo, hi = getattr(cfg, f"{split}_min_len"), getattr(cfg, f"{split}_max_len")
        for i in range(60):
            tokens, answer = generate_example(cfg, split, i)
            assert lo <= len(tokens) <= hi and tokens.min() >= 0 and tokens.max() < vocab
            body, ans = tokens[:-1], tokens[-1]
            if kind == "parity":
                assert answer.nonzero()[0].tolist() == [len(tokens) - 1]
                assert set(body) <= {1, 2} and ans == 1 + np.count_nonzero(body == 2) % 2
            elif kind == "even_pairs":
                pairs = sum(a != b for a, b in zip(body[:-1], body[1:]))
                assert set(body) <= {1, 2} and ans == (1 if pairs % 2 == 0 else 2)
            elif kind == "modular_arithmetic":
                assert len(tokens) % 2 == 1 and body[-1] == 4 and answer[-1] and answer.sum() == 1
                assert ans - 5 == _modular_reference(body, cfg.modulus)
            elif kind == "cycle_navigation":
                pos = sum({1: 0, 2: 1, 3: -1}[t] for t in body) % cfg.cycle_length
                assert answer.sum() == 1 and ans == 4 + pos
            else:
                kv = dict(zip(tokens[0:8:2], tokens[1:8:2]))
                assert len(kv) == 4 and answer.sum() == 4
                for p in np.flatnonzero(answer):
                    assert kv[tokens[p - 1]] == tokens[p]
    assert cfg.eval_min_len >= cfg.train_max_len or kind == "mqar"
    # The batch layout: inputs hide the answers, the loss covers exactly the answers.
    seq_len = cfg.eval_max_len - 1
    batch = next(iter(make_eval_dataset(cfg, seq_len=seq_len, batch_size=4)))
    for r in range(4):
        tokens, answer = generate_example(cfg, "eval", r)
        n, pos = len(tokens), np.flatnonzero(answer)
        np.testing.assert_array_equal(batch["targets"][r, : n - 1], tokens[1:])
        np.testing.assert_array_equal(np.flatnonzero(batch["loss_mask"][r]), pos - 1)
        assert (batch["inputs"][r, pos[pos < seq_len]] == 0).all()
        np.testing.assert_array_equal(batch["segment_ids"][r], (np.arange(seq_len) < n).astype(np.int32))


def test_synthetic_train_is_deterministic():
    cfg = DataConfig(kind="modular_arithmetic", seed=5)
    kw = dict(seq_len=48, global_batch_size=4, process_index=0, process_count=1)
    a = _take(iter(make_train_dataset(cfg, **kw)), 3)
    _assert_batches_equal(a, _take(iter(make_train_dataset(cfg, **kw)), 3))
    b = _take(iter(make_train_dataset(DataConfig(kind="modular_arithmetic", seed=6), **kw)), 1)
    assert not np.array_equal(a[0]["inputs"], b[0]["inputs"])


def test_synthetic_shards_are_disjoint_and_cover_each_epoch():
    cfg = DataConfig(kind="mqar", num_kv_pairs=2, mqar_vocab=4096, num_train_examples=24, prefetch_buffer_size=0)
    index_of = {generate_example(cfg, "train", i)[0].tobytes(): i for i in range(24)}
    assert len(index_of) == 24
    seq_len = cfg.train_max_len - 1
    epochs = [[], []]
    for p in range(3):
        it = iter(make_train_dataset(cfg, seq_len=seq_len, global_batch_size=6, process_index=p, process_count=3))
        for e in range(2):
            for batch in _take(it, 4):  # 8 examples per process and epoch
                for row in range(2):
                    n = int(batch["segment_ids"][row].sum()) + 1
                    tokens = np.append(batch["inputs"][row, :1], batch["targets"][row, : n - 1])
                    epochs[e].append(index_of[tokens.astype(np.int32).tobytes()])
    assert sorted(epochs[0]) == list(range(24)) and sorted(epochs[1]) == list(range(24))
    assert epochs[0] != epochs[1]  # reshuffled each epoch


def test_synthetic_eval_same_batch_count_in_every_process():
    cfg = DataConfig(kind="parity", num_eval_examples=10)
    seen = []
    for p in range(3):
        ds = make_eval_dataset(cfg, seq_len=255, batch_size=2, process_index=p, process_count=3)
        batches = list(ds)
        assert len(batches) == ds.num_batches == 2
        for b in batches:
            seen += [tuple(t) for t, m in zip(b["targets"], b["loss_mask"]) if m.any()]
    assert len(seen) == 10


# ----------------------------------------------------------------------------- packing


def test_packing_invariants_and_round_trip():
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, 100, rng.integers(1, 30)).astype(np.int32) for _ in range(40)]
    row_len = 17
    rows = list(pack_documents(docs, row_len))
    tokens = np.concatenate([t for t, _ in rows])
    segs = np.stack([s for _, s in rows])
    n = sum(len(d) for d in docs)
    np.testing.assert_array_equal(tokens[:n], np.concatenate(docs))  # round trip, in order
    assert (tokens[n:] == 0).all() and len(rows) == -(-n // row_len)
    assert (segs.reshape(-1)[:n] > 0).all() and (segs.reshape(-1)[n:] == 0).all()
    doc_of = np.repeat(np.arange(len(docs)), [len(d) for d in docs])  # document of every stream position
    for r, (t, s) in enumerate(rows):
        used = s > 0
        assert s[0] == 1 and (np.diff(s[used]) >= 0).all() and (np.diff(s[used]) <= 1).all()
        ex = row_to_example(t, s)
        pos = r * row_len + np.arange(row_len - 1)  # stream position of each input
        scored = ex["loss_mask"] > 0
        assert (pos[scored] + 1 < n).all()
        np.testing.assert_array_equal(doc_of[pos[scored]], doc_of[pos[scored] + 1])  # never across documents
        inside = (pos + 1 < n) & (s[:-1] > 0)
        boundary = inside & (doc_of[np.minimum(pos, n - 1)] != doc_of[np.minimum(pos + 1, n - 1)])
        np.testing.assert_array_equal(scored, inside & ~boundary)  # everything else is scored
        np.testing.assert_array_equal(ex["segment_ids"], s[:-1])
    # The grain dataset packs identically.
    import grain

    ds = PackIterDataset(grain.MapDataset.source(docs).to_iter_dataset(), row_len)
    got = list(ds)
    assert len(got) == len(rows)
    for g, (t, s) in zip(got, rows):
        np.testing.assert_array_equal(g["tokens"], t)
        np.testing.assert_array_equal(g["segment_ids"], s)


def test_corpus_shards_disjoint_and_covering(tmp_path):
    docs = [np.full(5, i + 1) for i in range(12)]  # row_len 5: one document per row
    path = _write_token_corpus(tmp_path, docs)
    cfg = DataConfig(kind="tokens", path=path, prefetch_buffer_size=0)
    firsts = []
    for p in range(2):
        it = iter(make_train_dataset(cfg, seq_len=4, global_batch_size=4, process_index=p, process_count=2))
        batches = _take(it, 3)  # one epoch: 6 documents per process
        firsts.append({int(b["inputs"][r, 0]) for b in batches for r in range(2)})
        assert all((b["loss_mask"] == 1).all() and (b["segment_ids"] == 1).all() for b in batches)
    assert firsts[0].isdisjoint(firsts[1]) and firsts[0] | firsts[1] == set(range(1, 13))


# ----------------------------------------------------------------------------- resume


def _check_resume(ds, skip: int = 3, n: int = 3):
    it = iter(ds)
    _take(it, skip)
    state = json.loads(json.dumps(it.get_state()))  # states are JSON (orbax writes them so)
    expected = _take(it, n)
    it2 = iter(ds)
    it2.set_state(state)
    _assert_batches_equal(expected, _take(it2, n))
    for i in (it, it2):
        getattr(i, "close", lambda: None)()


def test_resume_exactly_in_process(tmp_path):
    rng = np.random.default_rng(1)
    docs = [rng.integers(1, 900, rng.integers(3, 40)) for _ in range(30)]
    path = _write_token_corpus(tmp_path, docs)
    cfg = DataConfig(kind="tokens", path=path, seed=2)  # thread prefetch on (prefetch_buffer_size=2)
    _check_resume(make_train_dataset(cfg, seq_len=16, global_batch_size=2), skip=25)  # past an epoch
    cfg = DataConfig(kind="even_pairs", seed=2, prefetch_buffer_size=0)
    _check_resume(make_train_dataset(cfg, seq_len=40, global_batch_size=4), skip=5)


def test_resume_exactly_with_two_workers(tmp_path):
    rng = np.random.default_rng(2)
    docs = [rng.integers(1, 900, rng.integers(3, 40)) for _ in range(30)]
    path = _write_token_corpus(tmp_path, docs)
    cfg = DataConfig(kind="tokens", path=path, num_workers=2, seed=4)
    _check_resume(make_train_dataset(cfg, seq_len=16, global_batch_size=2), skip=5)


def test_resume_through_orbax_checkpoint(tmp_path):
    import grain
    import orbax.checkpoint as ocp

    cfg = DataConfig(kind="cycle_navigation", prefetch_buffer_size=0)
    ds = make_train_dataset(cfg, seq_len=40, global_batch_size=2)
    it = iter(ds)
    _take(it, 4)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as mngr:
        mngr.save(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
        expected = _take(it, 2)
        it2 = iter(ds)
        mngr.restore(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it2)))
    _assert_batches_equal(expected, _take(it2, 2))


# ----------------------------------------------------------------------------- sources and tokenizers


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids.dtype == np.int32 and ids.max() < 256 and tok.decode(ids) == text
    assert tok.decode(np.append(tok.encode("é"), [tok.eos_id, tok.pad_id])) == "é"
    assert len(tok.encode("日")) == 3 and tok.vocab_size == 259
    assert vocab_size(DataConfig(kind="text", path="x.txt")) == 259


def test_hf_tokenizer_json(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, "</s>": 2, "hello": 3, "world": 4, "again": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = str(tmp_path / "tok.json")
    tok.save(path)
    hf = HFTokenizer(path)
    assert (hf.vocab_size, hf.eos_id, hf.pad_id, hf.bos_id) == (6, 2, 0, None)
    assert hf.encode("hello world again").tolist() == [3, 4, 5] and hf.decode([3, 4]) == "hello world"
    hf2 = pickle.loads(pickle.dumps(hf))
    assert hf2.encode("world hello").tolist() == [4, 3]
    (tmp_path / "d.jsonl").write_text('{"body": "hello world"}\n\n{"body": "again"}\n')
    cfg = DataConfig(kind="text", path=str(tmp_path / "d.jsonl"), tokenizer=path, text_field="body")
    assert vocab_size(cfg) == 6
    src = TextSource([cfg.path], tokenizer=path, text_field="body")
    assert [src[i].tolist() for i in range(len(src))] == [[3, 4, 2], [5, 2]]


def test_text_source_splits_and_pickles(tmp_path):
    (tmp_path / "a.txt").write_text("para one\nstill one\n\n\npara two\n")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in TEXTS) + "\n")
    src = TextSource([str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")])
    assert [src.text(i) for i in range(len(src))] == ["para one\nstill one", "para two", *TEXTS]
    assert src[2][-1] == ByteTokenizer.eos_id
    src2 = pickle.loads(pickle.dumps(src))
    assert ByteTokenizer().decode(src2[3]) == TEXTS[1]
    lines = TextSource([str(tmp_path / "a.txt")], text_split="line")
    assert len(lines) == 3


def test_token_file_source_memmap_pickling_and_splits(tmp_path):
    docs = [np.arange(1, 8), np.arange(10, 13), np.arange(20, 40)]
    path = _write_token_corpus(tmp_path, docs)
    src = TokenFileSource(path, max_doc_tokens=8)
    assert len(src) == 1 + 1 + 3 and src[0].dtype == np.int32  # the 20-token document in pieces of 8, 8, 4
    np.testing.assert_array_equal(np.concatenate([src[i] for i in range(len(src))]), np.concatenate(docs))
    assert src._mm is not None
    blob = pickle.dumps(src)
    assert len(blob) < 4096  # no token data travels to workers
    src2 = pickle.loads(blob)
    assert src2._mm is None
    np.testing.assert_array_equal(src2[1], docs[1])
    # A bare token stream split at EOS (no metadata: dtype and eos from the config).
    raw = tmp_path / "raw.bin"
    np.array([5, 6, 0, 7, 0, 8, 9], np.uint32).tofile(raw)
    bare = TokenFileSource(str(raw), dtype="uint32", eos_id=0)
    assert [bare[i].tolist() for i in range(len(bare))] == [[5, 6, 0], [7, 0], [8, 9]]
    with pytest.raises(ValueError, match=r"token_dtype must be one of .*no metadata JSON .*got None"):
        TokenFileSource(str(raw))


def test_arrayrecord_round_trip_and_training_batch(tmp_path):
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in TEXTS) + "\n")
    meta = preprocess([str(tmp_path / "in.jsonl")], str(tmp_path / "out"), fmt="arrayrecord")
    assert meta["num_documents"] == len(TEXTS) and meta["dtype"] == "int32"
    src = ArrayRecordSource([str(tmp_path / "out.array_record")])
    tok = ByteTokenizer()
    for i, text in enumerate(TEXTS):
        assert src[i][-1] == tok.eos_id and tok.decode(src[i]) == text
    src2 = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(src2[1], src[1])
    cfg = DataConfig(kind="arrayrecord", path=str(tmp_path / "*.array_record"), heldout_fraction=0.2)
    assert vocab_size(cfg) == 259
    batch = next(iter(make_train_dataset(cfg, seq_len=16, global_batch_size=2)))
    assert batch["inputs"].shape == (2, 16) and batch["loss_mask"].dtype == np.float32
    evals = list(make_eval_dataset(cfg, seq_len=16, batch_size=2))  # the held-out last document
    assert len(evals) == 1 and tok.decode(evals[0]["inputs"][0]).startswith(TEXTS[-1][:-1])


def test_preprocess_cli_end_to_end(tmp_path):
    (tmp_path / "a.txt").write_text(f"{TEXTS[0]}\n\n{TEXTS[1]}\n")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in TEXTS[2:]) + "\n")
    out = tmp_path / "out" / "corpus"
    cmd = [
        sys.executable,
        "-m",
        "xlstm_jax.train.data.preprocess",
        "--input",
        str(tmp_path / "a.txt"),
        str(tmp_path / "b.jsonl"),
    ]
    cmd += ["--output", str(out), "--format", "tokens", "--tokenizer", "byte"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {len(TEXTS)} documents" in proc.stdout and "uint16" in proc.stdout
    meta = json.loads(Path(f"{out}.json").read_text())
    assert meta["vocab_size"] == 259 and meta["eos_id"] == 257
    cfg = DataConfig(kind="tokens", path=f"{out}.bin", eval_path=f"{out}.bin", prefetch_buffer_size=0)
    assert vocab_size(cfg) == 259
    src = TokenFileSource(f"{out}.bin")
    assert [ByteTokenizer().decode(src[i]) for i in range(len(src))] == TEXTS
    eval_batches = list(make_eval_dataset(cfg, seq_len=31, batch_size=2, process_count=1))
    n = sum(len(ByteTokenizer().encode(t)) + 1 for t in TEXTS)
    # The last token of each full row is only a target; every document's last target crosses to padding or the next.
    assert sum(int((b["segment_ids"] > 0).sum()) for b in eval_batches) == n - n // 32
    assert sum(int(b["loss_mask"].sum()) for b in eval_batches) == n - n // 32 - len(TEXTS)
    padded = list(make_eval_dataset(DataConfig(**{**cfg.to_dict(), "max_eval_batches": 9}), seq_len=31, batch_size=2))
    assert len(padded) == 9 and not padded[-1]["loss_mask"].any() and not padded[-1]["segment_ids"].any()
