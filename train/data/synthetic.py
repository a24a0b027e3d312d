"""Embedded tasks, generated on the fly and deterministically from ``(seed, split, index)``.

Formal languages (xLSTM paper section 4.1, after Deletang et al. 2023; train on short lengths,
evaluate on longer ones) and multi-query associative recall (MQAR, Zoology). Every generator
returns one example as ``tokens`` (L,) int32 and ``answer`` (L,) bool: the supervised positions.
Token 0 is padding in every task. The pipeline turns an example into a row: inputs are the tokens
with the answers replaced by 0 (as the official ``enable_mask``), targets are the tokens shifted
by one, and the loss covers only the targets that are answers, so "all masked positions correct"
is the official sequence accuracy.
"""

from __future__ import annotations

import numpy as np

from xlstm_jax._validation import check_choice
from xlstm_jax.train.data.config import DataConfig

SPLIT_IDS = {"train": 0, "eval": 1}


def parity(rng: np.random.Generator, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Parity of a bit string. Vocabulary 3: 0 pad, 1 = bit 0 / "even", 2 = bit 1 / "odd".

    ``length - 1`` random bits, then the answer: 1 if the number of 1-bits is even, else 2.
    Bits 1,0,1 give ``[2, 1, 2, 1]``; only the last position is supervised.
    """
    bits = rng.integers(0, 2, length - 1)
    return _with_answer(bits + 1, int(bits.sum() % 2) + 1)


def even_pairs(rng: np.random.Generator, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Whether a string over {a, b} has an even number of "ab" and "ba" pairs.

    Vocabulary 3: 0 pad, 1 = "a" / "even", 2 = "b" / "odd". ``length - 1`` letters, then the
    answer, 1 if the count of unequal neighbours is even (equivalently first == last letter), else 2.
    "abba" gives ``[1, 2, 2, 1, 1]``; only the last position is supervised.
    """
    letters = rng.integers(0, 2, length - 1)
    return _with_answer(letters + 1, 1 if letters[0] == letters[-1] else 2)


def modular_arithmetic(rng: np.random.Generator, length: int, modulus: int) -> tuple[np.ndarray, np.ndarray]:
    """An expression ``n0 op n0 op ... n_k = r`` with ``*`` before ``+``/``-``, evaluated mod ``modulus``.

    Vocabulary ``5 + modulus``: 0 pad, 1 "+", 2 "-", 3 "*", 4 "=", ``5 + v`` the number v in
    [0, modulus). ``length`` is odd: ``(length - 1) // 2`` numbers, the operators between them, "=",
    answer. With modulus 5, "3 - 2 * 4 = 0" gives ``[8, 2, 7, 3, 9, 4, 5]``; only the last position
    is supervised.
    """
    n = (length - 1) // 2
    nums = rng.integers(0, modulus, n)
    ops = rng.integers(1, 4, n - 1)
    total, term = 0, int(nums[0])
    sign = 1
    for op, num in zip(ops, nums[1:]):
        if op == 3:
            term *= int(num)
        else:
            total += sign * term
            sign, term = (1 if op == 1 else -1), int(num)
    total += sign * term
    body = np.empty(2 * n, np.int64)
    body[0::2] = nums + 5
    body[1:-1:2] = ops
    body[-1] = 4
    return _with_answer(body, total % modulus + 5)


def cycle_navigation(rng: np.random.Generator, length: int, cycle_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Final position on a cycle of ``cycle_length`` positions after a walk from position 0.

    Vocabulary ``4 + cycle_length``: 0 pad, 1 "stay", 2 "+1", 3 "-1", ``4 + p`` the position p.
    ``length - 1`` moves, then the answer. With 5 positions, "+1 +1 -1 stay" gives
    ``[2, 2, 3, 1, 5]`` (position 1); only the last position is supervised.
    """
    moves = rng.integers(1, 4, length - 1)
    steps = np.select([moves == 2, moves == 3], [1, -1], 0)
    return _with_answer(moves, int(steps.sum() % cycle_length) + 4)


def mqar(
    rng: np.random.Generator, length: int, num_kv_pairs: int, num_queries: int, vocab: int
) -> tuple[np.ndarray, np.ndarray]:
    """Multi-query associative recall: recall the value bound to each queried key.

    Vocabulary ``vocab``: 0 pad/filler, keys ``[1, 1 + K)``, values ``[1 + K, vocab)`` with
    ``K = (vocab - 1) // 2``. The first ``2 * num_kv_pairs`` tokens bind distinct keys to random
    values ``k1 v1 k2 v2 ...``; the rest of the ``length`` tokens is filler 0 except ``num_queries``
    queries ``k v`` (distinct keys, in random order) at random 2-token slots. Supervised: the value
    of each query. ``k1=3 v1=9 k2=5 v2=7`` and a query of 5 in the second slot give
    ``[3, 9, 5, 7, 0, 0, 5, 7]``, supervised at position 7.
    """
    num_keys = (vocab - 1) // 2
    keys = rng.choice(num_keys, num_kv_pairs, replace=False) + 1
    values = rng.integers(1 + num_keys, vocab, num_kv_pairs)
    tokens = np.zeros(length, np.int64)
    tokens[0 : 2 * num_kv_pairs : 2], tokens[1 : 2 * num_kv_pairs : 2] = keys, values
    answer = np.zeros(length, bool)
    which = rng.permutation(num_kv_pairs)[:num_queries]
    slots = np.sort(rng.choice((length - 2 * num_kv_pairs) // 2, num_queries, replace=False))
    pos = 2 * num_kv_pairs + 2 * slots
    tokens[pos], tokens[pos + 1] = keys[which], values[which]
    answer[pos + 1] = True
    return tokens.astype(np.int32), answer


def _with_answer(body: np.ndarray, answer: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.append(body, answer).astype(np.int32)
    mask = np.zeros(tokens.shape, bool)
    mask[-1] = True
    return tokens, mask


def task_vocab_size(cfg: DataConfig) -> int:
    """Vocabulary of an embedded task (padding 0 included)."""
    sizes = {
        "parity": 3,
        "even_pairs": 3,
        "modular_arithmetic": 5 + cfg.modulus,
        "cycle_navigation": 4 + cfg.cycle_length,
        "mqar": cfg.mqar_vocab,
    }
    return sizes[cfg.kind]


def generate_example(cfg: DataConfig, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Example ``index`` of ``split`` ("train"/"eval"): ``tokens`` (L,) int32, ``answer`` (L,) bool.

    ``L`` is uniform in ``[{split}_min_len, {split}_max_len]`` (odd lengths only for
    modular_arithmetic; MQAR uses the same range). Same arguments, same example, in any process.
    """
    rng = np.random.default_rng([cfg.seed, SPLIT_IDS[split], index])
    lo, hi = getattr(cfg, f"{split}_min_len"), getattr(cfg, f"{split}_max_len")
    if cfg.kind == "modular_arithmetic":
        n = int(rng.integers(lo // 2, (hi - 1) // 2 + 1))  # operands: 2n + 1 in [lo, hi]
        return modular_arithmetic(rng, 2 * n + 1, cfg.modulus)
    length = int(rng.integers(lo, hi + 1))
    if cfg.kind == "parity":
        return parity(rng, length)
    if cfg.kind == "even_pairs":
        return even_pairs(rng, length)
    if cfg.kind == "cycle_navigation":
        return cycle_navigation(rng, length, cfg.cycle_length)
    if cfg.kind == "mqar":
        return mqar(rng, length, cfg.num_kv_pairs, cfg.num_queries or cfg.num_kv_pairs, cfg.mqar_vocab)
    raise ValueError(f"DataConfig.kind={cfg.kind!r} is not an embedded task")


class SyntheticSource:
    """Random-access grain source: ``source[i] = generate_example(cfg, split, i)``, picklable.

    ``len`` is ``num_train_examples`` (one training epoch) or ``num_eval_examples``.
    """

    def __init__(self, cfg: DataConfig, split: str):
        check_choice("split", split, SPLIT_IDS)
        self._cfg, self._split = cfg, split
        self._len = cfg.num_train_examples if split == "train" else cfg.num_eval_examples

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return generate_example(self._cfg, self._split, int(index))

    def __repr__(self) -> str:
        return f"SyntheticSource(kind={self._cfg.kind!r}, split={self._split!r}, len={self._len})"
