"""Flax NNX building blocks shared by the xLSTM models."""

from .layers import CausalConv1d, Embed, HeadwiseLinear, LayerNorm, Linear, MultiHeadLayerNorm
from .params import constant, linspace, normal, ones, param, small_init, uniform, wang_init, zeros

__all__ = [
    "CausalConv1d",
    "Embed",
    "HeadwiseLinear",
    "LayerNorm",
    "Linear",
    "MultiHeadLayerNorm",
    "constant",
    "linspace",
    "normal",
    "ones",
    "param",
    "small_init",
    "uniform",
    "wang_init",
    "zeros",
]
