"""Per-device peak memory of a training step with the sequence split over a context mesh axis.

Compiled on CPU fake devices, not run: ``jax.jit(...).lower(abstract inputs).compile().memory_analysis()``
(temp + arguments + outputs - aliases, per device) of the loss and its gradient for a small NeurIPS
xLSTM[3:1] LM (embedding 128, 4 blocks, sLSTM at block 1, vocabulary 256, float32, chunk 64), one
sequence of S tokens on a (context,) mesh with axis rule ``length`` -> ``context``.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/context_memory.py \\
        [--seq 16384 65536 262144] [--context 1 4 8] [--out benchmarks/results_context_memory_cpu.jsonl]

Prints one JSON line per case and appends it to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import jax_compiled_memory  # noqa: E402
from xlstm_jax import backends  # noqa: E402
from xlstm_jax.models.xlstm_lm import mLSTMLayerConfig, sLSTMLayerConfig, xLSTMLMConfig, xLSTMLMModel  # noqa: E402

CONFIG = xLSTMLMConfig(
    vocab_size=256,
    embedding_dim=128,
    num_blocks=4,
    slstm_at=(1,),
    mlstm=mLSTMLayerConfig(num_heads=4),
    slstm=sLSTMLayerConfig(num_heads=4),
    chunk_size=64,
)


def measure(seq_len: int, context: int) -> dict:
    mesh = jax.make_mesh((context,), ("context",), axis_types=(AxisType.Auto,), devices=jax.devices()[:context])
    model = nnx.eval_shape(lambda: xLSTMLMModel(CONFIG, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(model)

    def loss(params, ids):
        logits = nnx.merge(graphdef, params)(ids)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), ids[:, 1:, None], axis=-1))

    ids = jax.ShapeDtypeStruct((1, seq_len), jnp.int32, sharding=NamedSharding(mesh, P(None, "context")))
    start = time.perf_counter()
    with jax.set_mesh(mesh), backends.axis_rules({"batch": (), "length": "context"}):
        compiled = jax.jit(jax.value_and_grad(loss)).lower(params, ids).compile()
    memory = jax_compiled_memory(compiled)
    return {
        "seq_len": seq_len,
        "context": context,
        "peak_bytes_per_device": memory["total"],
        "memory": memory,
        "compile_s": round(time.perf_counter() - start, 1),
        "method": "compiled memory_analysis on CPU fake devices, not run",
        "jax": jax.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, nargs="+", default=[16384, 65536, 262144])
    parser.add_argument("--context", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--out", default=str(Path(__file__).with_name("results_context_memory_cpu.jsonl")))
    args = parser.parse_args()
    for seq_len in args.seq:
        for context in args.context:
            row = measure(seq_len, context)
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
