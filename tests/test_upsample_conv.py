"""upsample-conv: a Conv over nearest-upsampled inputs (alone, or some inputs of a channel Concat)
becomes ConvTransposes at the low resolution (plus a Conv over the Concat's other inputs, summed),
the same outputs as onnxruntime's run of the original to float rounding; what is not such a Conv
(grouped, strided, dilated, not "same" sized, non-nearest or non-integer Resizes, other coordinate
modes, sizes, a Concat along another axis or read elsewhere, factors below min_scale) is left alone."""
import numpy as np
import onnx
import pytest
from onnx import helper

import tvmlite
from tvmlite.errors import OptionError
from tvmlite.export import export_model
from tvmlite.passes import Pipeline
from tvmlite.passes.upsample_conv import upsampled_conv_weight

from helpers import make_model, ort_run, tensor

rng = np.random.default_rng(0)
NEAREST = dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")


def ops(m):
    return [n.op_type for n in m.graph.toposort()]


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def resize(x, out, k, name, **attrs):
    scales = k if isinstance(k, (list, tuple)) else [1, 1, k, k]
    return ([helper.make_node("Resize", [x, "", f"{name}_scales"], [out], **{**NEAREST, **attrs})],
            [(f"{name}_scales", np.array(scales, np.float32))])


def up_conv_model(k=4, kernel=3, pads=None, conv_attrs=None, resize_attrs=None, cin=3, cout=5, opset=13):
    """x (cin ch) -> Resize(k) -> Conv(kernel, "same" pads unless given, bias) -> Relu."""
    pads = [(kernel - 1) // 2, (kernel - 1) // 2, kernel // 2, kernel // 2] if pads is None else pads
    nodes, inits = resize("x", "u", k, "r", **(resize_attrs or {}))
    inits += [("w", f32(cout, cin // (conv_attrs or {}).get("group", 1), kernel, kernel)), ("b", f32(cout))]
    nodes += [helper.make_node("Conv", ["u", "w", "b"], ["c"], pads=pads, **(conv_attrs or {})),
              helper.make_node("Relu", ["c"], ["y"])]
    return make_model(nodes, [tensor("x", ["N", cin, "H", "W"])], [tensor("y", ["N", "Co", "Ho", "Wo"])], inits, opset=opset)


def fpn_head_model(scales=(8, 4, 2), c=3, cout=4, extra_reader=False, axis=1):
    """DBNet's head: Concat(Resize8(a), Resize4(b), Resize2(c), d) -> Conv 3x3 -> Relu, inputs a..d at
    sizes 1, 2, 4, 8 x 2x3."""
    nodes, inits, inputs, cat = [], [], [], []
    for i, k in enumerate(scales):
        name = "abc"[i]
        inputs.append(tensor(name, [1, c, 2 * 8 // k, 3 * 8 // k]))
        n, s = resize(name, f"u{name}", k, f"r{name}")
        nodes += n
        inits += s
        cat.append(f"u{name}")
    inputs.append(tensor("d", [1, c, 16, 24]))
    cat.append("d")
    inits += [("w", f32(cout, c * len(cat), 3, 3)), ("bias", f32(cout))]
    nodes += [helper.make_node("Concat", cat, ["cat"], axis=axis),
              helper.make_node("Conv", ["cat", "w", "bias"], ["conv"], pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["conv"], ["y"])]
    outputs = [tensor("y", ["N", "Co", "Ho", "Wo"])] + ([tensor("cat", ["N", "Cc", "Hc", "Wc"])] if extra_reader else [])
    return make_model(nodes, inputs, outputs, inits, opset=13)


def check_same(proto, m, feeds):
    out = export_model(m)
    onnx.checker.check_model(out)
    for a, b in zip(ort_run(proto, feeds), ort_run(out, feeds)):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k,kernel,pads", [(2, 3, None), (4, 3, None), (8, 3, None), ((1, 1, 3, 2), 3, None),
                                           (4, 1, None), (4, 5, None), (4, 2, [0, 0, 1, 1]), (4, 2, [1, 1, 0, 0]),
                                           (4, 3, [0, 2, 2, 0])])
def test_weight_is_the_conv_over_the_upsampled_input(k, kernel, pads):
    """The ConvTranspose computes the Conv over the upsampled tensor for any factor, kernel and
    "same" padding (symmetric or not)."""
    proto = up_conv_model(k=k, kernel=kernel, pads=pads)
    m = tvmlite.load(proto)
    r = Pipeline("upsample-conv(min_scale=2)").run(m)[0]
    assert r.stats["rewritten"] == 1, r.skipped
    assert ops(m) == ["ConvTranspose", "Relu"]
    check_same(proto, m, {"x": f32(2, 3, 3, 5)})


def test_kernel_of_a_3x3_at_2x():
    """Along one axis at 2x a 3-tap kernel [w0, w1, w2] becomes [w2, w1+w2, w0+w1, w0] (stride 2, pad 1):
    output 0 takes input 0 through offset 1 (w1 + w2: its window reads the padding and input 0 twice)."""
    w = np.arange(1, 4, dtype=np.float32).reshape(1, 1, 1, 3)
    k, pads = upsampled_conv_weight(w, (1, 2), [0, 1])
    np.testing.assert_array_equal(k[0, 0, 0], [3, 5, 3, 1])
    assert pads == [0, 1, 0, 1]


def test_fpn_head_keeps_the_2x_input_in_a_conv_by_default():
    """min_scale 4: the 8x and 4x inputs become ConvTransposes; the 2x one and the full-size one stay in
    a Concat read by a Conv with the bias; the Relu reads the sum."""
    proto = fpn_head_model()
    m = tvmlite.load(proto)
    r = Pipeline("upsample-conv").run(m)[0]
    assert r.stats["rewritten"] == 1, r.skipped
    assert r.decisions[0]["scales"] == [[8, 8], [4, 4]] and r.decisions[0]["kept_channels"] == 6
    assert sorted(ops(m)) == sorted(["Resize", "Concat", "Conv", "ConvTranspose", "ConvTranspose", "Add", "Add",
                                     "Relu"])
    feeds = {"a": f32(1, 3, 2, 3), "b": f32(1, 3, 4, 6), "c": f32(1, 3, 8, 12), "d": f32(1, 3, 16, 24)}
    check_same(proto, m, feeds)
    m2 = tvmlite.load(proto)
    Pipeline("upsample-conv(min_scale=2)").run(m2)
    assert ops(m2).count("ConvTranspose") == 3 and "Concat" not in ops(m2) and "Resize" not in ops(m2)
    check_same(proto, m2, feeds)


def test_all_inputs_upsampled_puts_the_bias_in_a_convtranspose():
    proto = fpn_head_model(scales=(8, 4))
    # d is not upsampled here either: drop it by making a model of the two upsampled inputs only
    g = proto.graph
    cat = next(n for n in g.node if n.op_type == "Concat")
    cat.input.remove("d")
    g.input.remove(next(i for i in g.input if i.name == "d"))
    w = next(t for t in g.initializer if t.name == "w")
    w.CopyFrom(onnx.numpy_helper.from_array(f32(4, 6, 3, 3), "w"))
    m = tvmlite.load(proto)
    Pipeline("upsample-conv").run(m)
    assert sorted(ops(m)) == ["Add", "ConvTranspose", "ConvTranspose", "Relu"]
    assert sum(len(n.inputs) == 3 for n in m.graph.nodes if n.op_type == "ConvTranspose") == 1
    check_same(proto, m, {"a": f32(1, 3, 2, 3), "b": f32(1, 3, 4, 6)})


@pytest.mark.parametrize("kw,reason", [
    (dict(conv_attrs=dict(group=3), cin=3, cout=3), "group"),
    (dict(conv_attrs=dict(strides=[2, 2])), "stride"),
    (dict(conv_attrs=dict(dilations=[2, 2]), pads=[2, 2, 2, 2]), "dilation"),
    (dict(pads=[0, 0, 0, 0]), "keep the size"),
    (dict(resize_attrs=dict(mode="linear")), "nearest"),
    (dict(resize_attrs=dict(coordinate_transformation_mode="half_pixel")), "asymmetric"),
    (dict(resize_attrs=dict(nearest_mode="round_prefer_floor")), "floor"),
    (dict(k=[1, 1, 4.5, 4.5]), "integer"),
    (dict(k=[1, 2, 4, 4]), "integer"),
    (dict(k=2), "min_scale"),
])
def test_what_is_not_a_conv_over_an_upsampling_is_left_alone(kw, reason):
    proto = up_conv_model(**kw)
    m = tvmlite.load(proto)
    before = ops(m)
    r = Pipeline("upsample-conv").run(m)[0]
    assert r.stats["rewritten"] == 0 and ops(m) == before
    assert any(reason in why for _, why in r.skipped), r.skipped


def test_sizes_and_concats_that_do_not_fit_are_left_alone():
    proto = up_conv_model()
    r_node = next(n for n in proto.graph.node if n.op_type == "Resize")
    r_node.input[2] = ""
    r_node.input.append("sizes")
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array([1, 3, 8, 8], np.int64), "sizes"))
    m = tvmlite.load(proto)
    r = Pipeline("upsample-conv").run(m)[0]
    assert r.stats["rewritten"] == 0 and any("sizes" in why for _, why in r.skipped), r.skipped
    for kw, reason in [(dict(extra_reader=True), "read elsewhere"), (dict(scales=(2, 2, 2)), "no Concat input")]:
        m = tvmlite.load(fpn_head_model(**kw))
        r = Pipeline("upsample-conv").run(m)[0]
        assert r.stats["rewritten"] == 0 and any(reason in why for _, why in r.skipped), (kw, r.skipped)


def test_min_scale_below_2_is_refused():
    with pytest.raises(OptionError, match="min_scale"):
        Pipeline("upsample-conv(min_scale=1)")


def test_pp_ocr_det_head_in_onnxruntime():
    """PP-OCRv4 det: the head's Conv over Concat(8x, 4x, 2x, x) is the one rewritten (after the BN
    fold); the probability map as onnxruntime computes the original's (a 64x64 page keeps it fast)."""
    from conftest import corpus_model

    proto = onnx.load(corpus_model("ch_PP-OCRv4_det_infer.onnx"))
    m = tvmlite.load(proto)
    r = Pipeline("fold-bn,upsample-conv").run(m)[1]
    assert r.stats["rewritten"] == 1 and r.decisions[0]["scales"] == [[8, 8], [4, 4]], r.skipped
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    a, b = ort_run(proto, {"x": x})[0], ort_run(export_model(m), {"x": x})[0]
    assert a.shape == b.shape and np.abs(a - b).max() <= 1e-4 * max(1.0, float(np.abs(a).max()))


def test_resize_10_nearest_is_an_upsampling():
    """Resize-10 (inputs x, scales; asymmetric coordinates, floor when upsampling) is rewritten too."""
    nodes = [helper.make_node("Resize", ["x", "scales"], ["u"], mode="nearest"),
             helper.make_node("Conv", ["u", "w"], ["y"], pads=[1, 1, 1, 1])]
    inits = [("scales", np.array([1, 1, 4, 4], np.float32)), ("w", f32(2, 3, 3, 3))]
    proto = make_model(nodes, [tensor("x", [1, 3, 3, 4])], [tensor("y", [1, 2, 12, 16])], inits, opset=10)
    m = tvmlite.load(proto)
    r = Pipeline("upsample-conv").run(m)[0]
    assert r.stats["rewritten"] == 1 and ops(m) == ["ConvTranspose"], r.skipped
    check_same(proto, m, {"x": f32(1, 3, 3, 4)})
