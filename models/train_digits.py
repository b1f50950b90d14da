#!/usr/bin/env python
"""Train the small digit classifiers shipped in models/ and export them to ONNX.

NumPy only: every forward/backward pass below is written by hand (im2col
convolution through numpy stride tricks + matmul, batch-norm, ReLU, 2x2
max-pool, linear, dropout, softmax cross-entropy, AdamW).  scikit-learn is
used only for ``load_digits`` and the stratified split, ``onnx`` only to
write the model, ``onnxruntime`` only to check the exported file.

Usage (from the repository root)::

    .venv/bin/python models/train_digits.py --arch cnn   # -> models/digits_cnn.onnx
    .venv/bin/python models/train_digits.py --arch vgg   # -> models/digits_vgg.onnx

Both runs also (re)write models/digits_test.npz and models/digits_calib.npz
(identical bytes for both architectures: the split does not depend on --arch).

Preprocessing (also stored in each model's metadata_props):
    the 8x8 scikit-learn digits (integer values 0..16) are upsampled to 32x32
    with bilinear interpolation, half-pixel centres (align_corners=False, the
    same as ONNX Resize mode=linear coordinate_transformation_mode=half_pixel,
    edge samples clamped), then normalised x -> (x/16 - 0.5)/0.5, i.e. into
    [-1, 1] with background = -1.  Layout NCHW float32 [N,1,32,32].
Split: sklearn train_test_split(test_size=0.2, stratify=y, random_state=0)
    -> 1437 training / 360 held-out test images.

Internally activations are NHWC so that im2col + matmul yields NHWC output
directly; weights are transposed to ONNX's OIHW / NCHW-flatten order at export.
"""
import argparse
import os
import time

import numpy as np

from digits_layers import Conv3x3, BatchNorm, ReLU, MaxPool2, Flatten, Linear, Dropout

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 0
PREPROCESSING = (
    "sklearn.datasets.load_digits 8x8 images (values 0..16) upsampled to 32x32 "
    "by bilinear interpolation (half_pixel / align_corners=False, edges clamped), "
    "then x -> (x/16 - 0.5)/0.5 (range [-1,1], background -1); "
    "input NCHW float32 [N,1,32,32]; output logits [N,10] for classes 0..9"
)

ARCHS = {
    # feature extractor spec: ints are 3x3 conv (+BN+ReLU) output channels, 'M' is MaxPool 2x2
    "cnn": dict(features=[32, 64, "M", 128, "M", 128, "M"], hidden=128, dropout=0.3,
                epochs=12, lr=2e-3),
    "vgg": dict(features=[48, 48, "M", 96, 96, "M", 192, 192, "M"], hidden=256, dropout=0.3,
                epochs=10, lr=2e-3),
}


# ----------------------------------------------------------------------------- data
def bilinear_matrix(n_in, n_out):
    """[n_out, n_in] matrix of 1-D bilinear interpolation, half-pixel centres."""
    a = np.zeros((n_out, n_in), dtype=np.float64)
    scale = n_in / n_out
    for i in range(n_out):
        src = (i + 0.5) * scale - 0.5
        src = min(max(src, 0.0), n_in - 1)
        i0 = int(np.floor(src))
        i1 = min(i0 + 1, n_in - 1)
        f = src - i0
        a[i, i0] += 1.0 - f
        a[i, i1] += f
    return a


def preprocess(images8x8):
    """[n,8,8] values 0..16 -> float32 [n,1,32,32] in [-1,1]."""
    a = bilinear_matrix(8, 32)
    up = np.einsum("ij,njk,lk->nil", a, images8x8.astype(np.float64), a)
    x = (up / 16.0 - 0.5) / 0.5
    return x[:, None, :, :].astype(np.float32)


def load_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = preprocess(d.images)
    y = d.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.2, stratify=y, random_state=SEED)


def augment(x_nhwc, rng, max_shift=2):
    """Random integer translation by -max_shift..max_shift px (32x32 grid; 2 px =
    half an original 8x8 pixel), filling with the background value -1."""
    n, h, w, c = x_nhwc.shape
    p = max_shift
    xp = np.full((n, h + 2 * p, w + 2 * p, c), -1.0, dtype=np.float32)
    xp[:, p:p + h, p:p + w, :] = x_nhwc
    out = np.empty_like(x_nhwc)
    sh = rng.integers(-p, p + 1, size=(n, 2))
    for i in range(n):
        dy, dx = sh[i]
        out[i] = xp[i, p + dy:p + dy + h, p + dx:p + dx + w, :]
    return out


# ----------------------------------------------------------------------------- layers
class Net:
    def __init__(self, arch, rng):
        cfg = ARCHS[arch]
        self.arch = arch
        self.layers = []   # (kind, layer)
        c, hw, i, p = 1, 32, 0, 0
        for v in cfg["features"]:
            if v == "M":
                p += 1
                self.layers.append(("pool%d" % p, MaxPool2()))
                hw //= 2
            else:
                i += 1
                self.layers.append(("conv%d" % i, Conv3x3(c, v, rng, "conv%d" % i)))
                self.layers.append(("bn%d" % i, BatchNorm(v, "bn%d" % i)))
                self.layers.append(("relu%d" % i, ReLU()))
                c = v
        self.feat_shape = (c, hw, hw)
        self.layers.append(("flatten", Flatten()))
        self.layers.append(("fc1", Linear(c * hw * hw, cfg["hidden"], rng, "fc1")))
        self.layers.append(("relu_fc1", ReLU()))
        self.layers.append(("dropout", Dropout(cfg["dropout"], rng)))
        self.layers.append(("fc2", Linear(cfg["hidden"], 10, rng, "fc2", gain=1.0)))
        self.dropout = cfg["dropout"]

    def forward(self, x_nhwc, train):
        for _, l in self.layers:
            x_nhwc = l.forward(x_nhwc, train)
        return x_nhwc

    def backward(self, dlogits):
        d = dlogits
        for k, (_, l) in enumerate(reversed(self.layers)):
            first = k == len(self.layers) - 1
            d = l.backward(d, need_dx=not first)

    def param_items(self):
        for name, l in self.layers:
            for pn in l.params:
                yield name, pn, l

    def n_params(self):
        return int(sum(l.params[pn].size for _, pn, l in self.param_items()))

    def macs(self):
        """Multiply-accumulates of Conv + Gemm for one image."""
        total, hw = 0, 32
        for _, l in self.layers:
            if isinstance(l, Conv3x3):
                total += hw * hw * 9 * l.cin * l.cout
            elif isinstance(l, MaxPool2):
                hw //= 2
            elif isinstance(l, Linear):
                total += l.fin * l.fout
        return total

    def predict(self, x_nchw, bs=256):
        out = []
        for s in range(0, len(x_nchw), bs):
            out.append(self.forward(x_nchw[s:s + bs].transpose(0, 2, 3, 1).copy(), False))
        return np.concatenate(out)


def softmax_xent(logits, y):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    p = e / e.sum(axis=1, keepdims=True)
    n = len(y)
    loss = -np.log(p[np.arange(n), y] + 1e-12).mean()
    d = p
    d[np.arange(n), y] -= 1.0
    return float(loss), (d / n).astype(np.float32)


class AdamW:
    def __init__(self, net, lr, wd=5e-4, b1=0.9, b2=0.999, eps=1e-8):
        self.net, self.lr, self.wd, self.b1, self.b2, self.eps = net, lr, wd, b1, b2, eps
        self.m, self.v, self.t = {}, {}, 0

    def step(self, lr):
        self.t += 1
        b1, b2 = self.b1, self.b2
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for name, pn, l in self.net.param_items():
            key = (name, pn)
            g = l.grads[pn]
            if key not in self.m:
                self.m[key] = np.zeros_like(g)
                self.v[key] = np.zeros_like(g)
            m, v = self.m[key], self.v[key]
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            w = l.params[pn]
            if pn in l.decay:
                w -= lr * self.wd * w
            w -= (lr * (m / c1) / (np.sqrt(v / c2) + self.eps)).astype(np.float32)


# ----------------------------------------------------------------------------- export
def export_onnx(net, path, test_acc, n_test, epochs):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits, nodes = [], []

    def init(name, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name))
        return name

    cur = "input"
    for name, l in net.layers:
        out = name + "_out"
        if isinstance(l, Conv3x3):
            w = init(name + ".weight", l.onnx_weight())
            nodes.append(helper.make_node("Conv", [cur, w], [out], name=name,
                                          kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                          strides=[1, 1], dilations=[1, 1], group=1))
        elif isinstance(l, BatchNorm):
            ins = [cur, init(name + ".weight", l.params["gamma"]),
                   init(name + ".bias", l.params["beta"]),
                   init(name + ".running_mean", l.running_mean),
                   init(name + ".running_var", l.running_var)]
            nodes.append(helper.make_node("BatchNormalization", ins, [out], name=name,
                                          epsilon=l.eps, momentum=1.0 - l.momentum))
        elif isinstance(l, ReLU):
            nodes.append(helper.make_node("Relu", [cur], [out], name=name))
        elif isinstance(l, MaxPool2):
            nodes.append(helper.make_node("MaxPool", [cur], [out], name=name,
                                          kernel_shape=[2, 2], strides=[2, 2]))
        elif isinstance(l, Flatten):
            nodes.append(helper.make_node("Flatten", [cur], [out], name=name, axis=1))
        elif isinstance(l, Linear):
            w = l.params["W"]
            if name == "fc1":   # rows are in NHWC-flatten order (h,w,c) -> ONNX (c,h,w)
                c, h, ww = net.feat_shape
                w = w.reshape(h, ww, c, l.fout).transpose(2, 0, 1, 3).reshape(-1, l.fout)
            ins = [cur, init(name + ".weight", w.T), init(name + ".bias", l.params["b"])]
            if name == "fc2":
                out = "logits"
            nodes.append(helper.make_node("Gemm", ins, [out], name=name,
                                          alpha=1.0, beta=1.0, transB=1))
        elif isinstance(l, Dropout):
            n = helper.make_node("Dropout", [cur], [out], name=name)
            n.doc_string = "ratio %.2f at training time; identity at inference" % l.p
            nodes.append(n)
        cur = out

    graph = helper.make_graph(
        nodes, "digits_" + net.arch,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="tvmlite models/train_digits.py",
                              producer_version="1",
                              doc_string="8x8 scikit-learn digits classifier (%s); %s"
                              % (net.arch, PREPROCESSING))
    model.ir_version = 10   # onnx 1.23 defaults to IR 14, which onnxruntime 1.31 rejects
    meta = {
        "preprocessing": PREPROCESSING,
        "dataset": "sklearn.datasets.load_digits, stratified 80/20 split random_state=0 "
                   "(1437 train / 360 test); held-out split in models/digits_test.npz",
        "test_accuracy": "%.4f" % test_acc,
        "test_samples": str(n_test),
        "train_command": "python models/train_digits.py --arch %s --epochs %d"
                         % (net.arch, epochs),
        "parameters": str(net.n_params()),
        "macs": str(net.macs()),
        "classes": "0,1,2,3,4,5,6,7,8,9",
    }
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


# ----------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=sorted(ARCHS), default="cnn")
    ap.add_argument("--epochs", type=int, default=None, help="default: per-arch setting")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--out-dir", default=HERE)
    args = ap.parse_args()
    cfg = ARCHS[args.arch]
    epochs = args.epochs or cfg["epochs"]
    lr0 = args.lr or cfg["lr"]

    x_tr, x_te, y_tr, y_te = load_split()
    os.makedirs(args.out_dir, exist_ok=True)
    np.savez_compressed(os.path.join(args.out_dir, "digits_test.npz"),
                        input=x_te, label=y_te)
    calib_idx = np.sort(np.random.default_rng(SEED).permutation(len(x_tr))[:64])
    np.savez_compressed(os.path.join(args.out_dir, "digits_calib.npz"), input=x_tr[calib_idx])

    rng = np.random.default_rng(SEED)
    net = Net(args.arch, rng)
    print("arch=%s params=%d MACs/image=%d train=%d test=%d epochs=%d"
          % (args.arch, net.n_params(), net.macs(), len(x_tr), len(x_te), epochs))
    opt = AdamW(net, lr0)
    xtr_nhwc = x_tr.transpose(0, 2, 3, 1).copy()
    bs = args.batch_size
    steps_per_epoch = len(x_tr) // bs          # drop the last partial batch (BN stats)
    total_steps = epochs * steps_per_epoch
    warmup = steps_per_epoch // 2
    step = 0
    t0 = time.time()
    for ep in range(epochs):
        te = time.time()
        perm = rng.permutation(len(x_tr))
        tot_loss, correct = 0.0, 0
        for b in range(steps_per_epoch):
            idx = perm[b * bs:(b + 1) * bs]
            xb = augment(xtr_nhwc[idx], rng)
            yb = y_tr[idx]
            logits = net.forward(xb, True)
            loss, dl = softmax_xent(logits, yb)
            net.backward(dl)
            if step < warmup:
                lr = lr0 * (step + 1) / warmup
            else:
                lr = 0.5 * lr0 * (1 + np.cos(np.pi * (step - warmup) / (total_steps - warmup)))
            opt.step(lr)
            step += 1
            tot_loss += loss * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
        seen = steps_per_epoch * bs
        acc = (net.predict(x_te).argmax(1) == y_te).mean()
        print("epoch %2d  loss %.4f  train-acc %.4f  test-acc %.4f  %.1fs"
              % (ep + 1, tot_loss / seen, correct / seen, acc, time.time() - te), flush=True)
    train_seconds = time.time() - t0
    print("training time %.1fs" % train_seconds)

    np_logits = net.predict(x_te)
    np_acc = float((np_logits.argmax(1) == y_te).mean())
    path = os.path.join(args.out_dir, "digits_%s.onnx" % args.arch)
    export_onnx(net, path, np_acc, len(y_te), epochs)
    print("wrote %s (%d bytes)" % (path, os.path.getsize(path)))

    import onnxruntime as ort
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    ort_logits = sess.run(["logits"], {"input": x_te})[0]
    ort_acc = float((ort_logits.argmax(1) == y_te).mean())
    diff = float(np.abs(ort_logits - np_logits).max())
    print("numpy test accuracy       %.4f (%d/%d)" % (np_acc, round(np_acc * len(y_te)), len(y_te)))
    print("onnxruntime test accuracy %.4f (%d/%d)  max |logit diff| %.2e"
          % (ort_acc, round(ort_acc * len(y_te)), len(y_te), diff))
    assert ort_acc == np_acc, "onnxruntime and numpy disagree"


if __name__ == "__main__":
    main()
