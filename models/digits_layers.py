"""The layers models/train_digits.py trains with, NumPy only and written by hand: each has
forward(x, train) and backward(dy, need_dx); layers with weights keep them and their gradients in
``params`` / ``grads``. Activations are NHWC so that im2col + matmul yields NHWC output directly."""
import numpy as np
from numpy.lib.stride_tricks import as_strided


class Conv3x3:
    """3x3 convolution, stride 1, pad 1, no bias (a BatchNorm follows), NHWC.
    Weight stored as [9*Cin, Cout] with rows ordered (kh, kw, cin)."""

    def __init__(self, cin, cout, rng, name):
        self.cin, self.cout, self.name = cin, cout, name
        std = np.sqrt(2.0 / (9 * cin))
        self.params = {"W": (rng.standard_normal((9 * cin, cout)) * std).astype(np.float32)}
        self.decay = {"W"}

    @staticmethod
    def im2col(x):
        n, h, w, c = x.shape
        xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        sn, sh, sw, sc = xp.strides
        win = as_strided(xp, shape=(n, h, w, 3, 3, c), strides=(sn, sh, sw, sh, sw, sc),
                         writeable=False)
        return win.reshape(n * h * w, 9 * c)  # copies into (kh, kw, c)-ordered rows

    def forward(self, x, train):
        n, h, w, _ = x.shape
        cols = self.im2col(x)
        if train:
            self.cache = (cols, x.shape)
        return (cols @ self.params["W"]).reshape(n, h, w, self.cout)

    def backward(self, dy, need_dx=True):
        cols, (n, h, w, c) = self.cache
        dy2 = dy.reshape(-1, self.cout)
        self.grads = {"W": cols.T @ dy2}
        self.cache = None
        if not need_dx:
            return None
        dcols = (dy2 @ self.params["W"].T).reshape(n, h, w, 3, 3, c)
        dxp = np.zeros((n, h + 2, w + 2, c), dtype=np.float32)
        for kh in range(3):
            for kw in range(3):
                dxp[:, kh:kh + h, kw:kw + w, :] += dcols[:, :, :, kh, kw, :]
        return dxp[:, 1:-1, 1:-1, :]

    def onnx_weight(self):
        return self.params["W"].reshape(3, 3, self.cin, self.cout).transpose(3, 2, 0, 1)


class BatchNorm:
    def __init__(self, c, name, momentum=0.1, eps=1e-5):
        self.name, self.eps, self.momentum = name, eps, momentum
        self.params = {"gamma": np.ones(c, np.float32), "beta": np.zeros(c, np.float32)}
        self.decay = set()
        self.running_mean = np.zeros(c, np.float32)
        self.running_var = np.ones(c, np.float32)

    def forward(self, x, train):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if train:
            mean = x2.mean(axis=0)
            xc = x2 - mean
            var = (xc * xc).mean(axis=0)
            inv = 1.0 / np.sqrt(var + self.eps)
            xhat = xc * inv
            m = self.momentum
            cnt = x2.shape[0]
            self.running_mean = ((1 - m) * self.running_mean + m * mean).astype(np.float32)
            self.running_var = ((1 - m) * self.running_var
                                + m * var * cnt / max(cnt - 1, 1)).astype(np.float32)
            self.cache = (xhat, inv)
        else:
            inv = 1.0 / np.sqrt(self.running_var + self.eps)
            xhat = (x2 - self.running_mean) * inv
        return (xhat * self.params["gamma"] + self.params["beta"]).reshape(shape)

    def backward(self, dy, need_dx=True):
        shape = dy.shape
        dy2 = dy.reshape(-1, shape[-1])
        xhat, inv = self.cache
        self.cache = None
        dgamma = (dy2 * xhat).sum(axis=0)
        dbeta = dy2.sum(axis=0)
        self.grads = {"gamma": dgamma, "beta": dbeta}
        m = dy2.shape[0]
        dx = (self.params["gamma"] * inv / m) * (m * dy2 - dbeta - xhat * dgamma)
        return dx.reshape(shape)


class ReLU:
    params, decay = {}, set()

    def forward(self, x, train):
        y = np.maximum(x, 0)
        if train:
            self.mask = x > 0
        return y

    def backward(self, dy, need_dx=True):
        dx = dy * self.mask
        self.mask = None
        return dx


class MaxPool2:
    params, decay = {}, set()

    def forward(self, x, train):
        n, h, w, c = x.shape
        xr = x.reshape(n, h // 2, 2, w // 2, 2, c)
        y = xr.max(axis=(2, 4))
        if train:
            # first arg-max of each 2x2 window gets the gradient (ties are rare and
            # only occur at 0 after ReLU, where the ReLU mask zeroes them anyway)
            eq = xr == y[:, :, None, :, None, :]
            first = np.zeros_like(eq)
            taken = np.zeros(y.shape, dtype=bool)
            for a in range(2):
                for b in range(2):
                    e = eq[:, :, a, :, b, :] & ~taken
                    first[:, :, a, :, b, :] = e
                    taken |= e
            self.mask = first
        return y

    def backward(self, dy, need_dx=True):
        m = self.mask
        self.mask = None
        n, h2, _, w2, _, c = m.shape
        return (m * dy[:, :, None, :, None, :]).reshape(n, h2 * 2, w2 * 2, c)


class Flatten:
    """NHWC [N,h,w,c] -> [N, h*w*c] (order h,w,c; permuted to ONNX's c,h,w at export)."""
    params, decay = {}, set()

    def forward(self, x, train):
        self.shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy, need_dx=True):
        return dy.reshape(self.shape)


class Linear:
    def __init__(self, fin, fout, rng, name, gain=2.0):
        self.name, self.fin, self.fout = name, fin, fout
        std = np.sqrt(gain / fin)
        self.params = {"W": (rng.standard_normal((fin, fout)) * std).astype(np.float32),
                       "b": np.zeros(fout, np.float32)}
        self.decay = {"W"}

    def forward(self, x, train):
        if train:
            self.x = x
        return x @ self.params["W"] + self.params["b"]

    def backward(self, dy, need_dx=True):
        self.grads = {"W": self.x.T @ dy, "b": dy.sum(axis=0)}
        x = self.x
        self.x = None
        return dy @ self.params["W"].T if need_dx else None


class Dropout:
    params, decay = {}, set()

    def __init__(self, p, rng):
        self.p, self.rng = p, rng

    def forward(self, x, train):
        if not train or self.p == 0:
            return x
        self.mask = (self.rng.random(x.shape) >= self.p).astype(np.float32) / (1 - self.p)
        return x * self.mask

    def backward(self, dy, need_dx=True):
        return dy * self.mask if self.p > 0 else dy


# ----------------------------------------------------------------------------- model
