"""The `tvmlite` command line: inspect, run, compare, optimize, passes.

Every user-facing failure is one line on stderr and exit status 2 (no traceback unless --debug);
compare exits 1 when outputs are outside tolerance; Ctrl-C and SIGTERM exit 130 and 143 after the
same cleanup. A command's outputs are checked against its inputs and each other before any work
and land together only when it succeeds (tvmlite.outputs); temporaries live in a private $TMPDIR
that is removed on the way out.
"""
from __future__ import annotations

import json
import os
import signal
import sys

import click
import numpy as np

from tvmlite.cli_checks import (built_feeds, check_budgets, check_pass_spec_text, command_outputs, human_size,
                                load_labels, save_checked, unknown_dims)
from tvmlite.errors import InputError, TvmliteError
from tvmlite.limits import small_pages

shape_option = click.option("--shape", "shapes", multiple=True, metavar="NAME=D1xD2..",
                            help="Fix an input's symbolic dims, e.g. --shape x=1x3x224x224 or x:1,3,224,224 "
                                 "(a name keeps a dim symbolic: x=Nx3x224x224); optimize writes it into the model when a pass needs static "
                                 "shapes (conv lowering).")
custom_ops_option = click.option("--custom-ops", "custom_ops", multiple=True, type=click.Path(dir_okay=False),
                                 metavar="LIB.so", help="Register this custom-op library in the onnxruntime sessions.")
inputs_option = click.option("--inputs", "inputs", type=click.Path(dir_okay=False), default=None,
                             help="An .npz file with one array per model input (default: random inputs).")


class _Group(click.Group):
    def format_epilog(self, ctx, formatter):
        formatter.write_paragraph()
        formatter.write_text("Examples:\n  tvmlite inspect models/digits_cnn.onnx\n"
                             "  tvmlite optimize models/digits_cnn.onnx -o out.onnx\n"
                             "  tvmlite compare models/digits_cnn.onnx out.onnx --inputs models/digits_test.npz")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.version_option(package_name="tvmlite")
@click.pass_context
def cli(ctx, debug):
    """tvmlite: a graph compiler over ONNX models. Smaller, faster models from the ONNX files you
    have, every change checked against onnxruntime."""
    ctx.obj = {"debug": debug}


# ------------------------------------------------------------------------------------------ inspect
@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@shape_option
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--layers/--no-layers", default=True, help="List MACs per Conv/Gemm/MatMul layer.")
def inspect(model, shapes, as_json, layers):
    """Op histogram, parameters, MACs per layer and in total, file size, inputs and outputs."""
    from tvmlite.analysis import node_macs, op_histogram, param_count
    from tvmlite.frontend import load
    from tvmlite.inputs import parse_shape_overrides
    from tvmlite.export.shapes import check_input_shapes, static_shapes

    m = load(model)
    g = m.graph
    overrides = parse_shape_overrides(shapes)
    check_input_shapes(m, overrides)
    sh = static_shapes(m, overrides)
    per_layer = []
    for n in g.toposort():
        k = node_macs(m, n, sh)
        if k:
            per_layer.append({"node": n.label, "op": n.op_type, "macs": k, "output_shape": sh.get(n.outputs[0])})

    def io(names):
        return [{"name": n, "dtype": str(g.values[n].dtype), "shape": list(g.values[n].shape or [])}
                for n in names]

    info = {
        "model": model, "file_bytes": os.path.getsize(model), "ir_version": m.ir_version,
        "opsets": {d or "ai.onnx": v for d, v in m.opsets.items()}, "producer": m.producer_name,
        "inputs": io([n for n in g.inputs if n not in g.initializers]), "outputs": io(g.outputs),
        "nodes": len(g), "params": param_count(m), "macs": sum(r["macs"] for r in per_layer),
        "ops": op_histogram(m), "layers": per_layer if layers else [],
        "unknown_dims_as_1": unknown_dims(m, overrides),
    }
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    click.echo(f"model       {model} ({human_size(info['file_bytes'])}, IR {m.ir_version}, "
               f"opsets {', '.join(f'{k}:{v}' for k, v in info['opsets'].items())})")
    for kind in ("inputs", "outputs"):
        for x in info[kind]:
            click.echo(f"{kind[:-1]:<11} {x['name']}: {x['dtype']} {x['shape']}")
    click.echo(f"nodes       {info['nodes']}")
    click.echo(f"parameters  {info['params']:,}")
    click.echo(f"MACs        {info['macs']:,}" + (f"  (unknown dims counted as 1: {', '.join(info['unknown_dims_as_1'])};"
                                                   " fix them with --shape)" if info["unknown_dims_as_1"] else ""))
    click.echo("ops         " + ", ".join(f"{k} {v}" for k, v in info["ops"].items()))
    if layers and per_layer:
        click.echo("")
        click.echo(f"{'layer':<40} {'op':<14} {'output':<22} {'MACs':>14}")
        for r in per_layer:
            click.echo(f"{r['node'][:40]:<40} {r['op']:<14} {str(r['output_shape'])[:22]:<22} {r['macs']:>14,}")


# ---------------------------------------------------------------------------------------------- run
@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--backend", type=click.Choice(["numpy", "ort", "tvm"]), default="numpy", show_default=True)
@inputs_option
@shape_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the outputs to this .npz file.")
@click.option("--repeats", type=click.IntRange(0), default=0, help="Also time this many runs (median).")
def run(model, backend, inputs, shapes, output, repeats):
    """Run MODEL on the NumPy backend, onnxruntime or TVM and print (or save) its outputs.

    MODEL may also be a library made by 'tvmlite build' (NAME.so): it runs on TVM's runtime
    without the ONNX model."""
    from tvmlite.compare import median_ms, ort_session, prepare_inputs
    from tvmlite.frontend import load
    from tvmlite.inputs import parse_shape_overrides

    txn = command_outputs(model, inputs)
    staged = txn.file(output, "-o") if output else None
    if model.endswith(".so") or backend == "tvm":
        from tvmlite.backends.tvm import compile_model as tvm_compile, load_module

        if model.endswith(".so"):  # a library from 'tvmlite build': no ONNX model needed
            if shapes:
                raise InputError("--shape does not apply to a built library: its shapes were fixed by "
                                 "'tvmlite build --shape' (give --inputs of those shapes)")
            built, backend = load_module(model), "tvm"
            feeds = built_feeds(built, inputs)
        else:
            m = load(model)
            feeds = prepare_inputs(m, inputs, parse_shape_overrides(shapes))
            built = tvm_compile(m, {k: np.shape(v) for k, v in feeds.items()})
            click.echo(f"TVM build: {built.build_seconds:.2f} s{' (cached)' if built.cached else ''}, "
                       f"{built.summary}" + (f" (host-run: {'; '.join(built.host_ops)})" if built.host_ops else ""), err=True)
        names = built.output_names

        def go():
            return built.run(feeds)
    elif backend == "numpy":
        m = load(model)
        feeds = prepare_inputs(m, inputs, parse_shape_overrides(shapes))
        from tvmlite.backends.numpy import compile_model

        plan = compile_model(m)
        names = plan.output_names

        def go():
            return plan.run(feeds)
    else:
        feeds = prepare_inputs(load(model), inputs, parse_shape_overrides(shapes))
        sess = ort_session(model)
        names = [o.name for o in sess.get_outputs()]

        def go():
            return sess.run(None, feeds)
    with np.errstate(all="ignore"):
        outs = go()
        ms = median_ms(go, repeats) if repeats else None
    for name, arr in zip(names, outs):
        arr = np.asarray(arr)
        click.echo(f"{name}: {arr.dtype} {list(arr.shape)}")
        with np.printoptions(threshold=20, edgeitems=3, precision=5):
            click.echo(f"  {arr}")
    if ms is not None:
        click.echo(f"latency (median of {repeats}): {ms:.3f} ms on {backend}")
    if output:
        with open(staged, "wb") as f:  # a file object: np.savez would add ".npz" to a name
            np.savez(f, **{n: np.asarray(a) for n, a in zip(names, outs)})
        txn.commit()
        click.echo(f"wrote {output}")


# ------------------------------------------------------------------------------------------ compare
@cli.command()
@click.argument("reference", type=click.Path(dir_okay=False))
@click.argument("candidate", type=click.Path(dir_okay=False), required=False)
@click.option("--backend", type=click.Choice(["numpy", "ort", "tvm"]), default=None,
              help="Backend of the candidate (default: ort when CANDIDATE is given, else numpy).")
@inputs_option
@shape_option
@click.option("--rtol", type=float, default=1e-4, show_default=True, help="Relative to max|reference|.")
@click.option("--atol", type=float, default=1e-5, show_default=True)
@click.option("--repeats", type=click.IntRange(0), default=10, show_default=True, help="Timed runs per side.")
@click.option("--labels", default=None, metavar="NAME",
              help="Array NAME of the --inputs file holds class labels: report top-1 accuracy of both sides.")
@custom_ops_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def compare(reference, candidate, backend, inputs, shapes, rtol, atol, repeats, labels, custom_ops, as_json):
    """Compare CANDIDATE (or REFERENCE itself on another backend) with REFERENCE in onnxruntime.

    Exit status: 0 within tolerance, 1 outside, 2 on error."""
    from tvmlite.compare import compare as do_compare
    from tvmlite.inputs import parse_shape_overrides

    backend = backend or ("ort" if candidate else "numpy")
    check_budgets(rtol=rtol, atol=atol)
    label_array = load_labels(inputs, labels)
    report = do_compare(reference, candidate, backend=backend, inputs=inputs,
                        shapes=parse_shape_overrides(shapes), rtol=rtol, atol=atol, repeats=repeats,
                        labels=label_array, custom_ops=custom_ops)
    click.echo(json.dumps(report.to_dict(), indent=2, default=str) if as_json else report.format())
    sys.exit(0 if report.ok else 1)


# ----------------------------------------------------------------------------------------- optimize
@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the model.")
@click.option("--preset", default=None, help="A named pass list: " + ", ".join(
    f"{k} ({v})" for k, v in __import__("tvmlite.optimize", fromlist=["PRESETS"]).PRESETS.items())
    + f". Default: {__import__('tvmlite.optimize', fromlist=['DEFAULT_PRESET']).DEFAULT_PRESET}.")
@click.option("--passes", "spec", default=None,
              help="Comma-separated passes, options in parentheses: 'fold-bn,lowrank(ratio=0.3),dce'.")
@shape_option
@inputs_option
@click.option("--labels", default=None, metavar="NAME",
              help="Array NAME of the --inputs file holds class labels: check top-1 accuracy on a third of the "
                   "examples and report it on the other two thirds, which no check or per-layer choice sees.")
@click.option("--calib", type=click.Path(), default=None,
              help="Calibration data for the passes that need it (quantize, lowrank): an .npz with one "
                   "array per input, or a directory of .npy files. Without --inputs, its last quarter is held "
                   "out from calibration and checks the passes.")
@click.option("--metric", "metrics", multiple=True, metavar="[OUTPUT=]METRIC",
              help="What the budget applies to, for all checked outputs or one: rel (default: max|opt - orig| / "
                   "(max - min of the original output)), cosine (1 - cosine similarity), argmax or topk "
                   "(1 - share of rows whose top-1 agrees / is in the top 5; classifier outputs).")
@click.option("--check-output", "check_outputs", multiple=True, metavar="NAME",
              help="Check only these outputs against the budget (default: all; NaN/Inf fails on any output).")
@click.option("--max-error", "max_errors", multiple=True, metavar="[OUTPUT=]E",
              help="Undo a pass whose error on the metric exceeds E (per output with OUTPUT=E). Default: the "
                   "largest default budget of the passes run so far (rel: 0 for remove-identity/dce, 1e-3 for "
                   "clean-ups, 1e-2 fp16, 0.1 quantize/quantize-dynamic/lowrank/compress-weights/prune; "
                   "cosine/argmax/topk: 0.01 for lossy passes); with --labels: not checked.")
@click.option("--max-accuracy-drop", type=float, default=None, metavar="PT",
              help="With --labels: undo a pass that costs more than PT points of top-1 accuracy (default 0.5).")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Check each pass in onnxruntime against the original (and undo what breaks the budget).")
@click.option("--speed-check/--no-speed-check", default=None,
              help="Keep a pass only when the model runs faster after it in onnxruntime (timed side by "
                   "side at batch 1). Default: on for --preset fast (the default preset), off otherwise.")
@custom_ops_option
@click.option("--latency", type=click.Choice(["none", "ends", "rows"]), default=None,
              help="Which rows show an onnxruntime latency: none, ends (the input and the result, timed side by "
                   "side) or rows (each row that changed the model). Default: none when every pass is a "
                   "clean-up, else ends.")
@click.option("--strict", is_flag=True,
              help="Exit 1 (after writing OUTPUT) when the report has a warning: a pass undone on every layer, "
                   "a named pass that changed nothing, a held-out accuracy drop over budget.")
@click.option("-v", "--verbose", count=True, help="Show every layer decision and skip.")
@click.option("-q", "--quiet", is_flag=True, help="Only the pass table and warnings; no progress lines.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the report as JSON to this file (full precision).")
def optimize(model, output, preset, spec, shapes, inputs, labels, calib, metrics, check_outputs, max_errors,
             max_accuracy_drop, check, speed_check, custom_ops, latency, strict, verbose, quiet, json_path):
    """Run passes over MODEL, check each in onnxruntime, write the result to OUTPUT.

    Exit status: 0 done, 1 with --strict when the report has a warning, 2 on error."""
    from tvmlite.inputs import parse_shape_overrides
    from tvmlite.optimize import optimize as run_optimize
    from tvmlite.optimize import resolve_passes

    txn = command_outputs(model, inputs, calib, custom_ops)
    txn.file(output, "-o")
    staged_json = txn.file(json_path, "--json") if json_path else None
    from tvmlite.passes import parse_spec

    check_pass_spec_text(spec)
    from tvmlite.checker import per_output_option

    max_error = per_output_option(max_errors, "--max-error", float)
    for budget in (max_error.values() if isinstance(max_error, dict) else [max_error]):
        check_budgets(max_error=budget)
    check_budgets(max_accuracy_drop=max_accuracy_drop)
    metric = per_output_option(metrics, "--metric", str)
    parse_spec(resolve_passes(preset, spec))  # bad specs fail before any work
    label_array = load_labels(inputs, labels)
    m, report = run_optimize(model, passes=spec, preset=preset, inputs=inputs,
                             shapes=parse_shape_overrides(shapes), labels=label_array, calib=calib,
                             max_error=max_error, metric=metric,
                             check_outputs=list(check_outputs) or None, max_accuracy_drop=max_accuracy_drop,
                             check=check, speed_check=speed_check, custom_ops=custom_ops, progress=not quiet,
                             latency=latency)
    save_checked(m, output, txn)
    click.echo(report.format(0 if quiet else 1 + verbose))
    if json_path:
        data = {"model": model, "output": output, **report.to_dict()}
        with open(staged_json, "w") as f:
            f.write(json.dumps(data, indent=2, default=str))
    txn.commit()
    click.echo(f"wrote {output} ({human_size(os.path.getsize(output))}, input {human_size(os.path.getsize(model))})")
    if strict and report.warnings:
        sys.exit(1)


# ------------------------------------------------------------------------------------------- passes
@cli.command(name="passes")
def list_passes():
    """List the passes --passes accepts, with their options."""
    import dataclasses

    from tvmlite.passes import available_passes

    for name, cls in available_passes().items():
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        doc = doc[0] if doc else ""
        def default(f):
            if f.default is not dataclasses.MISSING:
                return repr(f.default)
            if f.default_factory is not dataclasses.MISSING:
                return repr(f.default_factory())
            return "(required)"

        opts = ", ".join(f"{f.name}={default(f)}" for f in dataclasses.fields(cls.Options))
        click.echo(f"{name:<18} {doc}" + (f"\n{'':<18} options: {opts}" if opts else ""))


# --------------------------------------------------------------------------------------- TVM build
@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The library to write (NAME.so; NAME.so.json and NAME.so.npz go beside it).")
@shape_option
@click.option("--strict", is_flag=True, help="Refuse a model with ops the TVM backend has no kernel for "
              "(by default they run on the host, by their NumPy kernels, inside the built plan).")
@click.option("--buckets", default=None, metavar="V1,V2,..", help="Bucket values for a ranged --shape dim "
              "(NAME=1x1..512; default: the powers of two in the range and its ends).")
@click.option("-v", "--verbose", is_flag=True, help="List each conv lowered to Winograd, and why.")
def build(model, output, shapes, strict, buckets, verbose):
    """Build MODEL with the TVM backend into a library for this CPU ('tvmlite run NAME.so' runs it)."""
    from tvmlite.backends.tvm import compile_model as tvm_compile
    from tvmlite.frontend import load
    from tvmlite.inputs import parse_shape_overrides

    if not output.endswith(".so"):
        raise TvmliteError(f"the output must end in .so: {output}")
    txn = command_outputs(model)
    for path, what in ((output, "-o"), (output + ".json", "run plan"), (output + ".npz", "constants")):
        txn.file(path, what)
    from tvmlite.backends.tvm import buckets as bk

    ranged, plain = bk.parse_ranges(shapes)
    given = bk.parse_bucket_list(buckets)
    if ranged:
        _build_bucketed(load(model), ranged, parse_shape_overrides(plain), given, output, txn, strict, verbose)
        return
    if given is not None:
        raise TvmliteError("--buckets needs a ranged --shape (e.g. --shape input_ids=1x1..512)")
    m, exact = load(model), parse_shape_overrides(shapes)
    bk.check_exact_shapes(m, exact)  # one line now, not host calls that refuse the shape at run time
    built = tvm_compile(m, exact, strict=strict)
    built.save(output, outputs=txn)
    txn.commit()
    click.echo(f"built {output} ({built.summary}) in {built.build_seconds:.2f} s"
               f"{' (from the build cache)' if built.cached else ''}")
    for line in built.host_ops:
        click.echo(f"  host-run: {line}")
    _winograd_report(built.winograd, verbose)


def _winograd_report(lines: list[str], verbose: bool) -> None:
    """'winograd: 3 of 5 3x3 convs ...', and with -v one line per conv lowered."""
    for i, line in enumerate(lines if verbose else lines[:1]):
        click.echo(f"  winograd: {line}" if i == 0 else f"    {line}")


def _build_bucketed(m, ranged, fixed, given, output, txn, strict, verbose=False):
    from tvmlite.backends.tvm import buckets as bk, compile_model as tvm_compile

    table, built = bk.build_bucketed(m, ranged, fixed, given, output, txn, strict=strict, compile_model=tvm_compile)
    txn.commit()
    for s, r in table["symbols"].items():
        click.echo(f"{s}: {r['range'][0]}..{r['range'][1]}, "
                   + ("padded to the next bucket (attention mask, checked)" if r["pad"]
                      else f"bucket values only ({r['why_not_padded']})"))
        if "narrowed_from" in r:
            click.echo(f"  narrowed from {r['narrowed_from'][0]}..{r['narrowed_from'][1]}: the model does not take "
                       + "; ".join(f"{s}={v} ({why})" for v, why in r["refused"].items()))
    for values, cm in built:
        click.echo(f"  bucket {','.join(f'{k}={v}' for k, v in values.items())}: {cm.summary} in "
                   f"{cm.build_seconds:.2f} s{' (cached)' if cm.cached else ''}")
    click.echo(f"built {output} ({len(built)} buckets; table {output}.buckets.json)")
    c = table["constants"]
    click.echo(f"  constants: {human_size(c['bytes'])} in {output}.npz, shared by the buckets "
               f"({human_size(c['unshared_bytes'])} if each bucket kept its own)")
    for line in built[-1][1].host_ops:
        click.echo(f"  host-run: {line}")
    _winograd_report(built[-1][1].winograd, verbose)


@cli.command(name="emit-tvm")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Directory for one TVMScript file per kernel.")
@shape_option
def emit_tvm(model, output, shapes):
    """Write each kernel's scheduled TIR as TVMScript, for people to read."""
    from tvmlite.backends.tvm import emit_tvmscript
    from tvmlite.frontend import load
    from tvmlite.inputs import parse_shape_overrides

    txn = command_outputs(model)
    txn.tree(output, "-o")
    paths = emit_tvmscript(load(model), output, parse_shape_overrides(shapes), outputs=txn)
    txn.commit()
    click.echo(f"wrote {len(paths)} kernels to {output} (index.txt lists them in run order)")


def main(argv=None) -> int:
    from tvmlite import outputs
    from tvmlite.cli_checks import debug_first, discard_open_outputs, interrupted

    args = debug_first(list(sys.argv[1:] if argv is None else argv))
    debug = args[:1] == ["--debug"]
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    outputs.signals_as_interrupts()
    try:
        with outputs.private_tmpdir(), small_pages():  # a CLI run's arrays: see limits.small_pages
            try:
                return _main(args, debug)
            except KeyboardInterrupt:  # a signal after _main had caught something else
                return interrupted()
            finally:
                outputs.cleaning = True
                discard_open_outputs()
    finally:
        outputs.cleaning = True
        for s, h in saved.items():
            signal.signal(s, h)


def _main(args: list[str], debug: bool) -> int:
    from tvmlite.cli_checks import interrupted, write_error

    try:
        cli.main(args=args, prog_name="tvmlite", standalone_mode=False)
        return 0
    except SystemExit as e:
        return int(e.code or 0)
    except (click.exceptions.Abort, KeyboardInterrupt):
        return interrupted()
    except click.ClickException as e:
        if debug:
            raise
        hint = f" (see 'tvmlite {e.ctx.info_name} --help')" if getattr(e, "ctx", None) and e.ctx.parent else ""
        click.echo(f"tvmlite: error: {e.format_message()}{hint}", err=True)
        return 2
    except TvmliteError as e:
        if debug:
            raise
        click.echo(f"tvmlite: error: {' '.join(str(e).split())}", err=True)
        return 2
    except OSError as e:
        msg = write_error(e)
        if msg is None or debug:
            raise
        click.echo(f"tvmlite: error: {msg}", err=True)
        return 2
    except MemoryError:
        click.echo("tvmlite: error: out of memory", err=True)
        return 2
    except RecursionError:
        click.echo("tvmlite: error: the model is nested too deeply to process (recursion limit)", err=True)
        return 2
    except Exception as e:  # noqa: BLE001 - never a traceback for users
        if debug:
            raise
        msg = " ".join(str(e).split())[:300]
        click.echo(f"tvmlite: internal error (a bug in tvmlite): {type(e).__name__}: {msg}; please report it "
                   "with the output of the same command run with --debug", err=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
