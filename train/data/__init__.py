"""Data for the trainer: embedded tasks (formal languages, MQAR) and corpora, packed and sharded with grain.

``make_train_dataset`` / ``make_eval_dataset`` yield dict batches of numpy arrays: ``inputs``,
``targets`` (b, S) int32, ``loss_mask`` (b, S) float32 and ``segment_ids`` (b, S) int32 (document
index within the row from 1, 0 = padding).
"""

from xlstm_jax.train.data.config import CORPUS_KINDS, FORMAL_KINDS, KINDS, SYNTHETIC_KINDS, DataConfig
from xlstm_jax.train.data.packing import PackIterDataset, pack_documents, row_to_example
from xlstm_jax.train.data.pipeline import EvalBatches, make_eval_dataset, make_train_dataset, vocab_size
from xlstm_jax.train.data.synthetic import generate_example
from xlstm_jax.train.data.tokenizers import ByteTokenizer, HFTokenizer, load_tokenizer

__all__ = [
    "CORPUS_KINDS",
    "FORMAL_KINDS",
    "KINDS",
    "SYNTHETIC_KINDS",
    "ByteTokenizer",
    "DataConfig",
    "EvalBatches",
    "HFTokenizer",
    "PackIterDataset",
    "generate_example",
    "load_tokenizer",
    "make_eval_dataset",
    "make_train_dataset",
    "pack_documents",
    "row_to_example",
    "vocab_size",
]
