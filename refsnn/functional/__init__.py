"""The math of refsnn: every op as a ``forward -> (out, cache)`` / ``backward(dout, cache)`` pair."""
from .attention import (ATTENTION_BACKENDS, qk_channel_backward, qk_channel_forward,
                        qk_token_backward, qk_token_forward, ssa_backward, ssa_forward)
from .conv import (conv1x1_backward, conv1x1_forward, conv2d_backward, conv2d_forward,
                   linear_backward, linear_forward)
from .lif import DEFAULT_ALPHA, SURROGATES, lif_backward, lif_forward
from .loss import cross_entropy_backward, cross_entropy_forward, softmax
from .norm import batchnorm_backward, batchnorm_forward
from .pool import maxpool2d_backward, maxpool2d_forward, mean_pool_backward, mean_pool_forward

__all__ = [
    "lif_forward", "lif_backward", "SURROGATES", "DEFAULT_ALPHA",
    "conv2d_forward", "conv2d_backward", "conv1x1_forward", "conv1x1_backward",
    "linear_forward", "linear_backward", "batchnorm_forward", "batchnorm_backward",
    "maxpool2d_forward", "maxpool2d_backward", "mean_pool_forward", "mean_pool_backward",
    "cross_entropy_forward", "cross_entropy_backward", "softmax",
    "qk_token_forward", "qk_token_backward", "qk_channel_forward", "qk_channel_backward",
    "ssa_forward", "ssa_backward", "ATTENTION_BACKENDS",
]
