"""`emit_tvmscript`: each kernel of a lowered graph (and of its compiled control-flow bodies) as
TVMScript, with an index, for reading a build's schedules without running it."""
from __future__ import annotations

import os

from tvmlite.backends.tvm.kernels.target import import_tvm
from tvmlite.backends.tvm.compile import static_inputs


def emit_tvmscript(model, out_dir: str, input_shapes: dict | None = None, lanes: int | None = None, *,
                   outputs=None) -> list[str]:
    """Write each kernel's scheduled TIR as TVMScript (one .py per kernel) plus an index; returns
    the paths written. The files land together (in ``outputs``, a `tvmlite.outputs.Outputs`, when
    given): a failure half way, a full disk say, leaves none of them."""
    from tvmlite.backends.tvm.lower import HostSegment, lower
    from tvmlite.backends.tvm.kernels.target import host_target, vector_lanes
    from tvmlite.outputs import Outputs

    if outputs is None:
        with Outputs() as own:
            return emit_tvmscript(model, out_dir, input_shapes, lanes, outputs=own)
    import_tvm()
    model, shapes = static_inputs(model, input_shapes)
    staged = outputs.tree(out_dir, "output directory", existing_ok=True)
    low = lower(model, shapes, lanes or vector_lanes())
    written = []
    index = [f"# TVM kernels of the graph, in run order (target {host_target()})", ""]
    # the kernels of compiled control-flow bodies (control.py) follow, under the body's prefix
    for kd in low.order + low.body_kernels:
        if isinstance(kd, HostSegment):  # no TIR: NumPy kernels, named in the index with the reason
            index.append("(host call)  <- " + ", ".join(f"{n.label} ({why})" for n, why in zip(kd.nodes, kd.reasons)))
            continue
        header = (f"# kernel {kd.name}: nodes {', '.join(kd.nodes)}\n"
                  f"# schedule steps: {', '.join(kd.steps)}\n"
                  f"# params: " + ", ".join(f"{p.kind} {p.name} {list(p.shape)}" for p in kd.params) + "\n")
        with open(os.path.join(staged, f"{kd.name}.py"), "w") as f:
            f.write(header + kd.func.with_attr("global_symbol", kd.name).script() + "\n")
        written.append(os.path.join(out_dir, f"{kd.name}.py"))
        index.append(f"{kd.name}.py  <- {', '.join(kd.nodes)}")
    with open(os.path.join(staged, "index.txt"), "w") as f:
        f.write("\n".join(index) + "\n")
    return written
