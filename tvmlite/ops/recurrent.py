"""Recurrent kernels: RNN, GRU and LSTM (ONNX semantics: every direction, layout, activation list,
sequence_lens, clip, input_forget and linear_before_reset), one time step at a time over batched
GEMMs.
"""
from __future__ import annotations

import numpy as np

from tvmlite.errors import UnsupportedError
from tvmlite.ops.registry import kernel


# --------------------------------------------------------------------------------------------------
# RNN / GRU / LSTM
# --------------------------------------------------------------------------------------------------

def _sigmoid(x):
    # numerically stable, stays in x's dtype
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


#: name -> (function(x, alpha, beta), default alpha, default beta, uses alpha, uses beta)
_ACTS = {
    "relu": (lambda x, a, b: np.maximum(x, 0), None, None),
    "tanh": (lambda x, a, b: np.tanh(x), None, None),
    "sigmoid": (lambda x, a, b: _sigmoid(x), None, None),
    "affine": (lambda x, a, b: a * x + b, 1.0, 0.0),
    "leakyrelu": (lambda x, a, b: np.where(x >= 0, x, a * x), 0.01, None),
    "thresholdedrelu": (lambda x, a, b: np.where(x > a, x, 0), 1.0, None),
    "scaledtanh": (lambda x, a, b: a * np.tanh(b * x), 1.0, 1.0),
    "hardsigmoid": (lambda x, a, b: np.clip(a * x + b, 0, 1), 0.2, 0.5),
    "elu": (lambda x, a, b: np.where(x >= 0, x, a * (np.exp(x) - 1)), 1.0, None),
    "softsign": (lambda x, a, b: x / (1 + np.abs(x)), None, None),
    "softplus": (lambda x, a, b: np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0), None, None),
}


def _activations(names, alphas, betas, defaults, num_dir, dt):
    if not names:
        names = defaults * num_dir
    if len(names) == len(defaults) and num_dir == 2:
        names = list(names) * 2
    if len(names) != len(defaults) * num_dir:
        raise UnsupportedError(f"recurrent op: {len(names)} activations for {num_dir} direction(s)")
    alphas = list(alphas or [])
    betas = list(betas or [])
    out = []
    for nm in names:
        key = (nm.decode() if isinstance(nm, bytes) else nm).lower()
        if key not in _ACTS:
            raise UnsupportedError(f"recurrent activation {nm!r} is not supported")
        fn, da, db = _ACTS[key]
        a = alphas.pop(0) if da is not None and alphas else da
        b = betas.pop(0) if db is not None and betas else db
        a = None if a is None else dt.type(a)
        b = None if b is None else dt.type(b)
        out.append(lambda x, fn=fn, a=a, b=b: fn(x, a, b).astype(dt, copy=False))
    return [out[i * len(defaults):(i + 1) * len(defaults)] for i in range(num_dir)]


def _rnn_prepare(x, sequence_lens, initial_states, layout, num_dir, hidden_size, direction):
    x = np.asarray(x)
    dt = x.dtype if x.dtype.kind == "f" and x.dtype.itemsize >= 4 else np.dtype(np.float32)
    if int(layout):
        x = x.transpose(1, 0, 2)
        initial_states = [None if s is None else np.asarray(s).transpose(1, 0, 2)
                          for s in initial_states]
    T, Bn = x.shape[:2]
    if sequence_lens is None:
        lens = np.full(Bn, T, dtype=np.int64)
    else:
        lens = np.asarray(sequence_lens).astype(np.int64).reshape(-1)
    return x.astype(dt, copy=False), dt, T, Bn, lens, initial_states


def _dir_input(x, lens, reverse):
    """Per-direction time-major input (reversed within each sequence's valid length)."""
    T = x.shape[0]
    if not reverse:
        return x
    t = np.arange(T)[:, None]
    src = lens[None, :] - 1 - t  # [T, B]
    src = np.where(src >= 0, src, 0)
    return x[src, np.arange(x.shape[1])[None, :]]


def _dir_output(ys, lens, reverse):
    T = ys.shape[0]
    if not reverse:
        return ys
    t = np.arange(T)[:, None]
    src = lens[None, :] - 1 - t
    valid = src >= 0
    out = np.zeros_like(ys)
    b = np.broadcast_to(np.arange(ys.shape[1])[None, :], src.shape)
    out[src[valid], b[valid]] = ys[valid]
    return out


def _directions(direction):
    direction = direction.decode() if isinstance(direction, bytes) else direction
    if direction == "forward":
        return [False]
    if direction == "reverse":
        return [True]
    if direction == "bidirectional":
        return [False, True]
    raise UnsupportedError(f"recurrent direction={direction!r} is not supported")


def _finish(ys_dirs, hs_dirs, layout, extra=None):
    Y = np.stack(ys_dirs, axis=1)  # [T, D, B, H]
    Yh = np.stack(hs_dirs, axis=0)  # [D, B, H]
    outs = [Y, Yh] + ([np.stack(extra, axis=0)] if extra is not None else [])
    if int(layout):
        outs = [Y.transpose(2, 0, 1, 3)] + [o.transpose(1, 0, 2) for o in outs[1:]]
    return tuple(np.ascontiguousarray(o) for o in outs)


def _recurrent(kind, x, w, r, b, sequence_lens, init, *, activation_alpha, activation_beta,
               activations, clip, direction, hidden_size, layout, p=None, input_forget=0,
               linear_before_reset=0):
    dirs = _directions(direction)
    D = len(dirs)
    ngates = {"rnn": 1, "gru": 3, "lstm": 4}[kind]
    w = np.asarray(w)
    H = int(hidden_size) if hidden_size is not None else w.shape[1] // ngates
    x, dt, T, Bn, lens, init = _rnn_prepare(x, sequence_lens, init, layout, D, H, direction)
    defaults = {"rnn": ["Tanh"], "gru": ["Sigmoid", "Tanh"], "lstm": ["Sigmoid", "Tanh", "Tanh"]}
    acts = _activations(activations, activation_alpha, activation_beta, defaults[kind], D, dt)
    w = w.astype(dt, copy=False)
    r = np.asarray(r).astype(dt, copy=False)
    b = (np.zeros((D, 2 * ngates * H), dtype=dt) if b is None else np.asarray(b).astype(dt))
    cl = None if clip is None else dt.type(clip)
    ys_dirs, hs_dirs, cs_dirs = [], [], []
    tmask = (np.arange(T)[:, None] < lens[None, :])  # [T, B]
    for d, rev in enumerate(dirs):
        xd = _dir_input(x, lens, rev)
        Wb, Rb = b[d, :ngates * H], b[d, ngates * H:]
        xw = np.matmul(xd, w[d].T) + Wb  # [T, B, G*H]
        if kind != "gru" or not int(linear_before_reset):
            xw += Rb
        else:  # the hidden gate's recurrence bias goes inside the reset product
            xw[..., :2 * H] += Rb[:2 * H]
        h = np.zeros((Bn, H), dtype=dt) if init[0] is None else np.asarray(init[0])[d].astype(dt)
        c = None
        if kind == "lstm":
            c = np.zeros((Bn, H), dtype=dt) if init[1] is None else np.asarray(init[1])[d].astype(dt)
            pp = (np.zeros(3 * H, dtype=dt) if p is None else np.asarray(p)[d].astype(dt))
            pi, po, pf = pp[:H], pp[H:2 * H], pp[2 * H:]
        ys = np.zeros((T, Bn, H), dtype=dt)
        rt_ = r[d].T
        f = acts[d]

        def cp(v):
            return v if cl is None else np.clip(v, -cl, cl)

        for t in range(T):
            m = tmask[t][:, None]
            if not m.any():
                continue
            if kind == "rnn":
                hn = f[0](cp(xw[t] + h @ rt_))
            elif kind == "gru":
                rz = h @ rt_[:, :2 * H]
                z = f[0](cp(xw[t, :, :H] + rz[:, :H]))
                rr = f[0](cp(xw[t, :, H:2 * H] + rz[:, H:]))
                if int(linear_before_reset):
                    hh = f[1](cp(xw[t, :, 2 * H:] + rr * (h @ rt_[:, 2 * H:] + Rb[2 * H:])))
                else:
                    hh = f[1](cp(xw[t, :, 2 * H:] + (rr * h) @ rt_[:, 2 * H:]))
                hn = (1 - z) * hh + z * h
            else:
                g = xw[t] + h @ rt_
                i = f[0](cp(g[:, :H] + pi * c))
                if int(input_forget):
                    fg = (1 - i).astype(dt)
                else:
                    fg = f[0](cp(g[:, 2 * H:3 * H] + pf * c))
                cc = f[1](cp(g[:, 3 * H:]))
                cn = fg * c + i * cc
                o = f[0](cp(g[:, H:2 * H] + po * cn))
                hn = o * f[2](cn)
                c = np.where(m, cn, c).astype(dt, copy=False)
            h = np.where(m, hn, h).astype(dt, copy=False)
            ys[t] = np.where(m, h, 0)
        ys_dirs.append(_dir_output(ys, lens, rev))
        hs_dirs.append(h)
        cs_dirs.append(c)
    odt = np.asarray(x).dtype
    res = _finish(ys_dirs, hs_dirs, layout, cs_dirs if kind == "lstm" else None)
    return tuple(o.astype(odt, copy=False) for o in res)


@kernel("RNN", since=1)
def rnn(x, w, r, b=None, sequence_lens=None, initial_h=None, *, activation_alpha=None,
        activation_beta=None, activations=None, clip=None, direction="forward", hidden_size=None,
        layout=0, output_sequence=0):
    return _recurrent("rnn", x, w, r, b, sequence_lens, [initial_h],
                      activation_alpha=activation_alpha, activation_beta=activation_beta,
                      activations=activations, clip=clip, direction=direction,
                      hidden_size=hidden_size, layout=layout)


@kernel("GRU", since=1)
def gru(x, w, r, b=None, sequence_lens=None, initial_h=None, *, activation_alpha=None,
        activation_beta=None, activations=None, clip=None, direction="forward", hidden_size=None,
        layout=0, linear_before_reset=0, output_sequence=0):
    return _recurrent("gru", x, w, r, b, sequence_lens, [initial_h],
                      activation_alpha=activation_alpha, activation_beta=activation_beta,
                      activations=activations, clip=clip, direction=direction,
                      hidden_size=hidden_size, layout=layout,
                      linear_before_reset=linear_before_reset)


@kernel("LSTM", since=1)
def lstm(x, w, r, b=None, sequence_lens=None, initial_h=None, initial_c=None, p=None, *,
         activation_alpha=None, activation_beta=None, activations=None, clip=None,
         direction="forward", hidden_size=None, input_forget=0, layout=0, output_sequence=0):
    return _recurrent("lstm", x, w, r, b, sequence_lens, [initial_h, initial_c],
                      activation_alpha=activation_alpha, activation_beta=activation_beta,
                      activations=activations, clip=clip, direction=direction,
                      hidden_size=hidden_size, layout=layout, p=p, input_forget=input_forget)
