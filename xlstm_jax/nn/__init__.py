"""Flax NNX building blocks shared by the xLSTM models."""

from .documents import document_starts
from .layers import CausalConv1d, Embed, HeadwiseLinear, LayerNorm, Linear, MultiHeadLayerNorm, matmul_rows
from .params import constant, linspace, normal, ones, param, small_init, uniform, wang_init, zeros
from .remat import REMAT_POLICIES, check_remat_policy, remat
from .stack import run_stack

__all__ = [
    "REMAT_POLICIES",
    "check_remat_policy",
    "remat",
    "run_stack",
    "CausalConv1d",
    "Embed",
    "HeadwiseLinear",
    "LayerNorm",
    "Linear",
    "MultiHeadLayerNorm",
    "constant",
    "document_starts",
    "linspace",
    "matmul_rows",
    "normal",
    "ones",
    "param",
    "small_init",
    "uniform",
    "wang_init",
    "zeros",
]
