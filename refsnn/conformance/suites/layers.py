"""Suite ``layers``: the non-spiking layers of SPEC section 3 (conv, Conv1x1 on tokens, linear,
BatchNorm, MaxPool, the mean pool of the head, softmax cross-entropy) forward and backward.

Tensors use the model's layout with T and B kept apart (``[T, B, C, H, W]`` feature maps,
``[T, B, C, N]`` token maps); a port merges T and B itself where its layers want that.
"""
from __future__ import annotations

import numpy as np

from ...functional import (batchnorm_backward, batchnorm_forward, conv1x1_backward, conv1x1_forward,
                           conv2d_backward, conv2d_forward, cross_entropy_backward, cross_entropy_forward,
                           linear_backward, linear_forward, maxpool2d_backward, maxpool2d_forward,
                           mean_pool_backward, mean_pool_forward)
from ..case import Case, case_seed, grad_out, rng_for, value_out

SUITE = "layers"
MAP = "[T, B, C, H, W]"
TOK = "[T, B, C, N]"


def _kaiming(rng, shape, fan_in):
    bound = 1.0 / np.sqrt(fan_in)      # PyTorch's default kaiming-uniform(a=sqrt 5) bound
    return rng.uniform(-bound, bound, shape)


def _case(name, op, description, params, layout, inputs, expected, outputs, seed):
    return Case(suite=SUITE, name=name, op=op, spec="SPEC section 3", description=description,
                params=params, layout=layout, inputs=inputs, expected=expected, outputs=outputs,
                seed=seed, spike_margin=None)


def conv2d_case(name, shape, out_ch, k, stride, padding, bias, description):
    seed = case_seed(SUITE, name)
    rng = rng_for(seed)
    T, B, C, H, W = shape
    x = rng.normal(0, 1, shape)
    w = _kaiming(rng, (out_ch, C, k, k), C * k * k)
    b = _kaiming(rng, (out_ch,), C * k * k) if bias else None
    y2, cache = conv2d_forward(x.reshape(T * B, C, H, W), w, b, stride=stride, padding=padding)
    y = y2.reshape(T, B, *y2.shape[1:])
    dout = rng.normal(0, 1, y.shape)
    dx, dw, db = conv2d_backward(dout.reshape(y2.shape), cache)
    inputs = {"x": x, "weight": w, "dout": dout}
    expected = {"y": y, "dx": dx.reshape(shape), "dweight": dw}
    outputs = {"y": value_out(), "dx": grad_out(), "dweight": grad_out()}
    layout = {"x": MAP, "weight": "[O, C, KH, KW] (OIHW)", "dout": MAP, "y": MAP, "dx": MAP,
              "dweight": "[O, C, KH, KW]"}
    if bias:
        inputs["bias"], expected["dbias"], outputs["dbias"] = b, db, grad_out()
        layout.update(bias="[O]", dbias="[O]")
    params = {"kernel_size": k, "stride": stride, "padding": padding, "bias": bias,
              "padding_value": 0.0}
    return _case(name, "conv2d", description, params, layout, inputs, expected, outputs, seed)


def conv1x1_case(name, shape, out_ch, bias, description):
    seed = case_seed(SUITE, name)
    rng = rng_for(seed)
    T, B, C, N = shape
    x = rng.normal(0, 1, shape)
    w = _kaiming(rng, (out_ch, C), C)
    b = _kaiming(rng, (out_ch,), C) if bias else None
    y3, cache = conv1x1_forward(x.reshape(T * B, C, N), w, b)
    y = y3.reshape(T, B, out_ch, N)
    dout = rng.normal(0, 1, y.shape)
    dx, dw, db = conv1x1_backward(dout.reshape(y3.shape), cache)
    inputs = {"x": x, "weight": w, "dout": dout}
    expected = {"y": y, "dx": dx.reshape(shape), "dweight": dw}
    outputs = {"y": value_out(), "dx": grad_out(), "dweight": grad_out()}
    layout = {"x": TOK, "weight": "[O, C]", "dout": TOK, "y": TOK, "dx": TOK, "dweight": "[O, C]"}
    if bias:
        inputs["bias"], expected["dbias"], outputs["dbias"] = b, db, grad_out()
        layout.update(bias="[O]", dbias="[O]")
    return _case(name, "conv1x1", description, {"bias": bias}, layout, inputs, expected, outputs, seed)


def linear_case(name):
    seed = case_seed(SUITE, name)
    rng = rng_for(seed)
    x = rng.normal(0, 1, (4, 12))
    w = _kaiming(rng, (5, 12), 12)
    b = _kaiming(rng, (5,), 12)
    y, cache = linear_forward(x, w, b)
    dout = rng.normal(0, 1, y.shape)
    dx, dw, db = linear_backward(dout, cache)
    return _case(name, "linear", "y = x weight^T + bias (the head).", {"bias": True},
                 {"x": "[B, I]", "weight": "[O, I]", "bias": "[O]", "dout": "[B, O]", "y": "[B, O]",
                  "dx": "[B, I]", "dweight": "[O, I]", "dbias": "[O]"},
                 {"x": x, "weight": w, "bias": b, "dout": dout},
                 {"y": y, "dx": dx, "dweight": dw, "dbias": db},
                 {"y": value_out(), "dx": grad_out(), "dweight": grad_out(), "dbias": grad_out()}, seed)


def batchnorm_case(name, shape, training, description):
    seed = case_seed(SUITE, name)
    rng = rng_for(seed)
    C = shape[2]
    x = rng.normal(0.3, 1.5, shape)
    weight = rng.uniform(0.5, 1.5, C)
    bias = rng.normal(0, 0.5, C)
    running_mean = rng.normal(0, 0.3, C)
    running_var = rng.uniform(0.5, 2.0, C)
    x3 = x.reshape(shape[0] * shape[1], C, -1)
    y3, cache, new_mean, new_var = batchnorm_forward(x3, weight, bias, running_mean, running_var,
                                                     training=training, momentum=0.1, eps=1e-5)
    dout = rng.normal(0, 1, shape)
    dx, dw, db = batchnorm_backward(dout.reshape(x3.shape), cache)
    lay = MAP if len(shape) == 5 else TOK
    params = {"training": training, "momentum": 0.1, "eps": 1e-5,
              "statistics_axes": "every axis but C (T, B and the spatial or token axes together)",
              "running_var": "unbiased estimate (n / (n - 1)) in the update",
              "update": "running = (1 - momentum) * running + momentum * batch_statistic"}
    return _case(name, "batchnorm", description, params,
                 {"x": lay, "dout": lay, "y": lay, "dx": lay, "weight": "[C]", "bias": "[C]",
                  "running_mean": "[C]", "running_var": "[C]", "dweight": "[C]", "dbias": "[C]"},
                 {"x": x, "weight": weight, "bias": bias, "running_mean": running_mean,
                  "running_var": running_var, "dout": dout},
                 {"y": y3.reshape(shape), "dx": dx.reshape(shape), "dweight": dw, "dbias": db,
                  "running_mean": new_mean, "running_var": new_var},
                 {"y": value_out(), "dx": grad_out(), "dweight": grad_out(), "dbias": grad_out(),
                  "running_mean": value_out(), "running_var": value_out()}, seed)


def maxpool_case(name, shape, draw, description):
    seed = case_seed(SUITE, name)
    rng = rng_for(seed)
    x = draw(rng, shape)
    T, B, C, H, W = shape
    y4, cache = maxpool2d_forward(x.reshape(T * B, C, H, W), kernel_size=3, stride=2, padding=1)
    y = y4.reshape(T, B, *y4.shape[1:])
    dout = rng.normal(0, 1, y.shape)
    dx = maxpool2d_backward(dout.reshape(y4.shape), cache).reshape(shape)
    params = {"kernel_size": 3, "stride": 2, "padding": 1, "padding_value": "-inf",
              "ties": "the gradient goes to the first maximum in row-major window order"}
    return _case(name, "maxpool2d", description, params,
                 {"x": MAP, "dout": MAP, "y": MAP, "dx": MAP},
                 {"x": x, "dout": dout}, {"y": y, "dx": dx}, {"y": value_out(), "dx": grad_out()}, seed)


def mean_pool_case(name):
    seed = case_seed(SUITE, name)
    rng = rng_for(seed)
    x = rng.normal(0, 1, (3, 2, 5, 7))
    y, cache = mean_pool_forward(x)
    dout = rng.normal(0, 1, y.shape)
    dx = mean_pool_backward(dout, cache)
    return _case(name, "mean_pool", "The head's global average over time steps and tokens.", {},
                 {"x": TOK, "dout": "[B, C]", "y": "[B, C]", "dx": TOK},
                 {"x": x, "dout": dout}, {"y": y, "dx": dx}, {"y": value_out(), "dx": grad_out()}, seed)


def cross_entropy_case(name, scale, description):
    seed = case_seed(SUITE, name)
    rng = rng_for(seed)
    logits = rng.normal(0, scale, (6, 10))
    labels = rng.integers(0, 10, 6).astype(np.int64)
    loss, cache = cross_entropy_forward(logits, labels, label_smoothing=0.0)
    dlogits = cross_entropy_backward(cache, 1.0)
    params = {"label_smoothing": 0.0, "reduction": "mean over the batch", "dloss": 1.0}
    return _case(name, "cross_entropy", description, params,
                 {"logits": "[B, K]", "labels": "[B] int64", "loss": "[] (a scalar)", "dlogits": "[B, K]"},
                 {"logits": logits, "labels": labels},
                 {"loss": np.asarray(loss, dtype=np.float64), "dlogits": dlogits},
                 {"loss": value_out(), "dlogits": grad_out()}, seed)


def _normal(rng, shape):
    return rng.normal(0, 1, shape)


def _ties(rng, shape):
    return rng.integers(0, 3, shape).astype(np.float64)


def _negative(rng, shape):
    return -rng.uniform(0.5, 2.0, shape)


def cases() -> list[Case]:
    return [
        conv2d_case("conv2d-3x3-s1-p1", (2, 2, 3, 9, 8), 5, 3, 1, 1, False,
                    "3x3 convolution, stride 1, zero padding 1, no bias (the patch embeddings)."),
        conv2d_case("conv2d-3x3-s1-p1-bias", (2, 2, 3, 6, 7), 4, 3, 1, 1, True,
                    "3x3 convolution with a bias."),
        conv2d_case("conv2d-3x3-in1", (2, 2, 1, 8, 8), 2, 3, 1, 1, False,
                    "The audio stem: one input channel."),
        conv2d_case("conv2d-1x1-s2", (2, 2, 4, 7, 6), 6, 1, 2, 0, False,
                    "The shortcut conv1x1 with stride 2 (odd height: ceil(H/2) outputs)."),
        conv1x1_case("conv1x1-tokens", (2, 3, 6, 10), 4, False, "Conv1x1 over tokens, no bias."),
        conv1x1_case("conv1x1-tokens-bias", (2, 3, 6, 10), 8, True, "Conv1x1 over tokens with a bias."),
        linear_case("linear"),
        batchnorm_case("batchnorm-map-train", (2, 3, 4, 5, 5), True,
                       "Train mode on a feature map: batch statistics, running statistics updated."),
        batchnorm_case("batchnorm-tokens-train", (2, 3, 6, 9), True, "Train mode on a token map."),
        batchnorm_case("batchnorm-map-eval", (2, 3, 4, 5, 5), False,
                       "Eval mode: the running statistics normalise; they are returned unchanged."),
        batchnorm_case("batchnorm-tokens-eval", (2, 3, 6, 9), False, "Eval mode on a token map."),
        maxpool_case("maxpool-even", (2, 2, 3, 8, 8), _normal, "MaxPool2d(3, 2, 1), even size."),
        maxpool_case("maxpool-odd", (2, 2, 3, 7, 5), _normal, "MaxPool2d(3, 2, 1), odd sizes."),
        maxpool_case("maxpool-ties", (2, 2, 3, 7, 6), _ties,
                     "Values in {0, 1, 2}: ties in most windows; the gradient goes to the first "
                     "maximum in row-major window order."),
        maxpool_case("maxpool-negative", (1, 2, 2, 5, 6), _negative,
                     "All values negative: padding (-inf) never wins."),
        mean_pool_case("mean-pool"),
        cross_entropy_case("cross-entropy", 1.0, "Softmax cross-entropy, mean over the batch, no "
                                                 "label smoothing; dlogits for dloss = 1."),
        cross_entropy_case("cross-entropy-large-logits", 40.0,
                           "Logits of magnitude ~100: a stable log-sum-exp is needed."),
    ]
