"""The ``layoutconv`` command: a thin layer over the public API.

Every command is one entry in :data:`COMMANDS` (a name, a help line, a function
that adds its arguments, a function that runs it).  Frameworks are imported by
the commands that need them, never by ``layoutconv --help``.

Exit status: 0 success, 1 a verification or check failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from .errors import LayoutError


class Command(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Register a sub-command; a name registered twice is a bug."""

    def register(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        if name in COMMANDS:
            raise RuntimeError(f"command {name!r} registered twice")
        COMMANDS[name] = Command(help, add_arguments, run)
        return run

    return register


# -- shared argument groups -------------------------------------------------


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _per_axis(text: str) -> int | tuple[int, ...]:
    """``2`` -> 2 (every axis), ``2,1`` -> (2, 1) (one value per spatial axis of a 2-D or 3-D layer)."""
    values = _int_list(text)
    return values[0] if len(values) == 1 else values


def _padding(text: str) -> Any:
    if "," in text or text.isdigit():
        values = _int_list(text)
        return values[0] if len(values) == 1 else values
    return text


#: defaults of the hyperparameter options for a random convolution; a file's own values win
_GEOMETRY_DEFAULTS: dict[str, Any] = {
    "stride": 1, "dilation": 1, "groups": 1, "padding": "valid", "padding_mode": "zeros", "activation": "linear",
}


def add_hyperparameter_arguments(g: argparse._ArgumentGroup) -> None:
    """Options for what a weight file may not record (every Keras 1 weights file records none of it)."""
    g.add_argument("--stride", type=_per_axis, help="S, or S1,S2[,S3] per spatial axis (default: the file's value, else 1)")
    g.add_argument("--dilation", type=_per_axis, help="D, or D1,D2[,D3] per spatial axis (default: the file's value, else 1)")
    g.add_argument("--groups", type=int, help="default: the file's value, else 1")
    g.add_argument(
        "--padding",
        type=_padding,
        help="valid, same, same_upper, same_lower, causal, P, or BEGIN,END (default: the file's value, else valid); "
        "'same' in a Theano file means Theano's rule",
    )
    g.add_argument("--activation", help="fused activation, e.g. relu (default: the file's value, else linear)")
    g.add_argument(
        "--dim-ordering", choices=["th", "tf"],
        help="Keras 1 2-D/3-D layers: the kernel's dim_ordering when the file does not record it",
    )
    g.add_argument(
        "--output-shape", type=_int_list, metavar="ROWS,COLS",
        help="Keras 1 Deconvolution2D: the output size when the file does not record it",
    )


def add_conv_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("convolution (with --file: what the file does not record)")
    g.add_argument("--in-channels", type=int, default=3)
    g.add_argument("--out-channels", "--filters", type=int, default=64)
    g.add_argument("--kernel-size", type=int, default=10)
    add_hyperparameter_arguments(g)
    g.add_argument("--padding-mode", help="zeros, reflect, replicate, circular (default zeros)")
    g.add_argument("--no-bias", action="store_true")
    g.add_argument("--dtype", default="float32", help="float16, bfloat16, float32, float64")
    g.add_argument("--seed", type=int, default=0, help="seed for random weights and inputs")
    f = p.add_argument_group("or a convolution from a file")
    f.add_argument("--file", help="a Keras .h5/.hdf5/.keras/.weights.h5 file or an .onnx model")
    f.add_argument("--layer", help="layer (Keras) or node (ONNX) name; default: the only Conv1D")
    f.add_argument("--backend", choices=["theano", "tensorflow"], help="override the backend of a Keras 1 file")
    r = p.add_argument_group("or raw arrays, exactly as a framework returned them (with the convolution options above)")
    r.add_argument("--kernel", help=".npy kernel")
    r.add_argument("--bias", help=".npy bias (omit for none)")
    r.add_argument(
        "--source",
        help="the convention the raw kernel (and the by-hand formula) is in: "
        "torch, onnx, keras, keras-theano, keras1.1-theano, keras1.1-tensorflow, keras1.0-theano, keras1.0-tensorflow",
    )


#: options that only a Keras 1 file's 2-D/3-D layers take
_KERAS1_OPTIONS = ("dim_ordering", "output_shape")


class Loaded(NamedTuple):
    """The convolution a command works on, and for a file, each hyperparameter's value and source."""

    conv: Any
    hyperparameters: dict[str, tuple[Any, str]] | None = None


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The hyperparameter options the user typed (``None`` means not given)."""
    keys = ("stride", "dilation", "groups", "padding", "activation", "padding_mode") + _KERAS1_OPTIONS
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def _from_onnx_file(path: str, layer: str | None, given: dict[str, Any]) -> Loaded:
    from . import from_onnx
    from .errors import ConfigError, fail

    conv = from_onnx(path, node=layer)
    try:
        wanted = conv.replace(**given)
    except Exception:  # an invalid option: report it against the file
        wanted = None
    same = wanted is not None and all(
        conv.same_pads_for_every_size(wanted.padding) if k == "padding" else getattr(wanted, k) == getattr(conv, k)
        for k in given
    )
    if not same:
        raise fail(
            ConfigError,
            f"Options contradict the ONNX model {path}",
            "no hyperparameter options (an ONNX Conv node records all of them) or the same values",
            ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in given.items()) + f" against {conv!r}",
        )
    return Loaded(conv, {k: (getattr(conv, k), "file") for k in ("padding", "stride", "dilation", "groups", "activation")})


def conv_from_args(args: argparse.Namespace) -> Loaded:
    """The convolution a command works on: read from --file (any rank), raw arrays, or random weights (Conv1D)."""
    from .conv import Conv1D
    from .errors import ConfigError, fail

    given = _given(args)
    keras1_only = [f"--{k.replace('_', '-')}" for k in _KERAS1_OPTIONS if k in given]
    if keras1_only and (not args.file or str(args.file).endswith(".onnx")):
        raise fail(
            ConfigError, f"Option {' and '.join(keras1_only)} is only for Keras 1 files", "--file with a Keras 1 2-D or 3-D layer",
            f"{'--file ' + str(args.file) if args.file else 'no --file'}",
        )
    if args.file:
        path = str(args.file)
        if path.endswith(".onnx"):
            return _from_onnx_file(path, args.layer, given)
        from .legacy import open as open_keras

        if "padding_mode" in given and given.pop("padding_mode") != "zeros":
            from .errors import ConfigError, fail

            raise fail(ConfigError, "Keras pads with zeros only", "--padding-mode zeros or none", f"--padding-mode {args.padding_mode}")
        kf = open_keras(path, backend=args.backend)
        resolved = kf.hyperparameters_of(args.layer, **given)
        if args.layer is None and kf.conv1d_layers:  # the only Conv1D, as before layers of every rank were read
            return Loaded(kf.conv1d(**given), resolved)
        return Loaded(kf.conv(args.layer, **given), resolved)
    geometry = {**_GEOMETRY_DEFAULTS, **given}
    if getattr(args, "kernel", None):
        from .conventions import CONVENTIONS

        source = _convention(args.source or "torch")
        kernel = load_npy(args.kernel, "kernel")
        bias = load_npy(args.bias, "bias")
        return Loaded(CONVENTIONS[source.name].conv1d(kernel, bias, **geometry))
    dtype = _dtype(args.dtype)
    rng = np.random.default_rng(args.seed)
    groups = geometry["groups"]
    if groups <= 0 or args.in_channels % groups:
        from .errors import ConfigError, fail

        raise fail(
            ConfigError,
            "in_channels is not divisible by groups",
            f"--in-channels to be a multiple of --groups={groups}",
            f"--in-channels={args.in_channels}",
        )
    cg = args.in_channels // groups
    kernel = rng.standard_normal((args.out_channels, cg, args.kernel_size)) / np.sqrt(max(cg * args.kernel_size, 1))
    bias = None if args.no_bias else rng.standard_normal(args.out_channels) * 0.1
    return Loaded(Conv1D(kernel.astype(dtype), None if bias is None else bias.astype(dtype), **geometry))


def assumptions(loaded: Loaded) -> dict[str, Any]:
    """The hyperparameters a file did not record and the user did not give: what the command assumed."""
    return {k: v for k, (v, source) in (loaded.hyperparameters or {}).items() if source == "default"}


def print_assumptions(loaded: Loaded, path: str, out: Any = None) -> None:
    """Say, before doing the work, what was assumed for a file (nothing when everything was recorded or given)."""
    assumed = assumptions(loaded)
    if not assumed:
        return
    words = ", ".join(f"{k}={v!r}" for k, v in assumed.items())
    options = " ".join(f"--{k}" for k in assumed)
    print(
        f"note: {path} does not record {', '.join(assumed)}; assumed {words}. "
        f"If the model was built otherwise, pass {options}.",
        file=out or sys.stdout,
    )


def hyperparameters_json(loaded: Loaded) -> dict[str, Any] | None:
    """Each hyperparameter with its value and source, for --json output."""
    if loaded.hyperparameters is None:
        return None
    plain = lambda v: [list(p) for p in v] if isinstance(v, tuple) and v and isinstance(v[0], tuple) else (list(v) if isinstance(v, tuple) else v)  # noqa: E731
    return {k: {"value": plain(v), "source": src} for k, (v, src) in loaded.hyperparameters.items()}


def _convention(name: str):
    from .conventions import CONVENTIONS
    from .errors import ConfigError, fail

    if name not in CONVENTIONS:
        raise fail(ConfigError, "Unknown convention", f"one of {sorted(CONVENTIONS)}", f"{name!r}")
    return CONVENTIONS[name]


def load_npy(path: str | None, what: str):
    """Read a ``.npy`` array safely (see ``layoutconv/_npy.py``); a bad file is a FileFormatError naming it."""
    from ._npy import read_npy

    return None if path is None else read_npy(path, what)


def _dtype(name: str):
    from .record import float_dtype

    return float_dtype(name)


# -- commands ----------------------------------------------------------------


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0)


@command("demo", "the showcase: a Keras Conv1D(64, 10) on (123, 3), converted and proven equal", _demo_args)
def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(seed=args.seed)


def _verify_args(p: argparse.ArgumentParser) -> None:
    add_conv_arguments(p)
    p.add_argument("--frameworks", default=None, help="comma-separated: keras,tf_keras,torch,onnx (default: all installed)")
    p.add_argument("--length", type=int, help="input length (default: odd, not a multiple of the stride)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--data-format", default="channels_last", choices=["channels_last", "channels_first"], help="for Keras")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--workers", type=int,
        help="processes that convert and run frameworks side by side (default: $LAYOUTCONV_WORKERS, else one per CPU; "
        "Keras 3 and tf_keras share one); 1 runs everything in this process, one after the other",
    )


def _workers(args: argparse.Namespace) -> int:
    """``--workers``, else ``LAYOUTCONV_WORKERS``, else one per CPU (verify never starts more than it has framework groups).

    More processes than CPUs would only add interpreters to start (layoutconv/_workers.py).
    """
    import os

    from .errors import ConfigError, fail

    if args.workers is not None:
        value, given = args.workers, f"--workers {args.workers}"
    else:
        text = os.environ.get("LAYOUTCONV_WORKERS", "").strip()
        if not text:
            return os.cpu_count() or 1
        given = f"LAYOUTCONV_WORKERS={text!r}"
        value = int(text) if text.isdigit() else 0
    if value < 1:
        raise fail(ConfigError, "Invalid number of workers", "a positive integer (1: one process, one framework after the other)", given)
    return value


@command("verify", "convert a convolution into every framework and compare each with the reference", _verify_args)
def _verify(args: argparse.Namespace) -> int:
    from .verify import verify

    loaded = conv_from_args(args)
    if not args.json:
        print_assumptions(loaded, args.file)
    names = args.frameworks.split(",") if args.frameworks else None
    report = verify(
        loaded.conv, frameworks=names, length=args.length, batch=args.batch, seed=args.seed,
        keras_data_format=args.data_format, workers=_workers(args),
    )
    if args.json:
        print(json.dumps({**report.to_dict(), "hyperparameters": hyperparameters_json(loaded)}, indent=2))
    else:
        print(report)
    return 0 if report.passed else 1


def _inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "path",
        help="a Keras weight file (.h5, .hdf5, .keras, .weights.h5), an .onnx model, "
        "a PyTorch state_dict (.pt, .pth) or a .safetensors file; the format is read from the content",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--backend", choices=["theano", "tensorflow"], help="override the inferred backend (Keras files)")
    p.add_argument("--model", action="store_true", help="also read the whole model: every layer, its record and the layout of its output")
    p.add_argument("--architecture", help="model.json for a weights-only Keras file (implies --model)")


@command("inspect", "what a weight file holds: convolutions, layouts, NaN/Inf (exit 1 if any weight is not finite)", _inspect_args)
def _inspect(args: argparse.Namespace) -> int:
    from ._inspect import inspect_text

    text, report = inspect_text(args.path, as_json=args.json, backend=args.backend)
    if args.model or args.architecture:
        from .model import read_model

        graph = read_model(args.path, architecture=args.architecture, backend=args.backend)
        if args.json:
            payload = json.loads(text)
            payload["model"] = graph.to_dict()
            text = json.dumps(payload, indent=2)
        else:
            text += "\n\n" + graph.summary()
    print(text)
    return 1 if report.nonfinite() else 0


def _explain_args(p: argparse.ArgumentParser) -> None:
    add_conv_arguments(p)
    p.add_argument("--index", type=_int_list, help="output element n,f,t (2-D: n,f,i,j; default all zeros)")
    p.add_argument(
        "--length", type=int,
        help="every spatial size of the random input (default 123 for 1-D; for 2-D/3-D odd sizes that differ per axis)",
    )
    p.add_argument("--input", help="a .npy input, (N, C, *spatial) or with --input-format channels_last (N, *spatial, C)")
    p.add_argument("--input-format", choices=["channels_first", "channels_last"], help="default: the source convention's")
    p.add_argument("--json", action="store_true")


@command("explain", "one output element by hand: taps, positions, products, sums", _explain_args)
def _explain(args: argparse.Namespace) -> int:
    from ._explain import explain

    from .conv import Conv, Conv1D
    from .verify import default_input

    loaded = conv_from_args(args)
    conv = loaded.conv
    if not args.json:
        print_assumptions(loaded, args.file)
    source = _convention(args.source) if args.source else None
    if source is None and args.file and not str(args.file).endswith(".onnx") and isinstance(conv, Conv):
        from .legacy import open as open_keras

        kf = open_keras(args.file, backend=args.backend)
        name = None if args.layer is None and kf.conv1d_layers else args.layer
        source = kf.convention(name, **({"dim_ordering": args.dim_ordering} if args.dim_ordering else {}))
    data_format = args.input_format or (source.data_format if source else "channels_first")
    if args.input:
        x = load_npy(args.input, "input")
    else:
        if isinstance(conv, Conv1D):
            shape = (1, conv.in_channels, 123 if args.length is None else args.length)
            x = np.random.default_rng(args.seed + 1).standard_normal(shape).astype(conv.dtype)
        else:
            x = default_input(conv, length=args.length, batch=1, seed=args.seed + 1)
        if data_format == "channels_last":
            x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    index = args.index if args.index is not None else (0,) * (2 + getattr(conv, "spatial_rank", 1))
    result = explain(conv, x, index, source=source, data_format=data_format)
    print(json.dumps({**result.to_dict(), "hyperparameters": hyperparameters_json(loaded)}, indent=2) if args.json else result)
    return 0 if result.agree else 1


def _convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="a Keras weight file (.h5, .hdf5, .keras, .weights.h5) or an .onnx model")
    p.add_argument("output", help="where to write: .onnx, .keras (Keras 3) or .pt/.pth (PyTorch state_dict)")
    p.add_argument("--layer", help="layer (Keras) or node (ONNX) name; default: the only Conv1D")
    p.add_argument("--backend", choices=["theano", "tensorflow"], help="override the backend of a Keras 1 file")
    p.add_argument("--to", choices=["onnx", "keras", "torch", "safetensors"], help="output format (default: from the suffix)")
    p.add_argument("--model", action="store_true", help="convert the whole model (implied by --architecture and .safetensors)")
    p.add_argument("--architecture", help="model.json (model.to_json()) for a weights-only Keras file, or file.py:Class for a "
                   "PyTorch .pt/.safetensors state_dict; implies --model")
    p.add_argument("--input-shape", action="append", help="with a PyTorch state_dict: the shape forward takes, e.g. 1,4,34 (repeatable)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("--parents", action="store_true", help="create the output's missing parent directories")
    add_hyperparameter_arguments(p.add_argument_group("what the file does not record (every Keras 1 weights file)"))
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--stream", action=argparse.BooleanOptionalAction, default=None,
        help="convert a whole model to .safetensors/.pt/.onnx layer by layer, holding one layer's weights at a time "
        "(default: for Keras files of 256 MiB or more); --no-stream builds the whole model in memory",
    )
    p.add_argument(
        "--external-data", action=argparse.BooleanOptionalAction, default=None,
        help="a whole model to .onnx: weights in OUTPUT.data beside the model (ONNX external data; default: above 1.5 GiB "
        "of weights, always when streaming)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar (shown on a terminal for conversions over a second)")


@command("convert", "write a file's Conv1D to ONNX, Keras 3 or PyTorch; keep the file only if it verifies", _convert_args)
def _convert(args: argparse.Namespace) -> int:
    from .convert import save

    from .convert_model import is_whole_model

    if args.model or args.architecture or args.stream or args.to == "safetensors" or str(args.output).lower().endswith(".safetensors") or (
        not args.layer and is_whole_model(args.source, args.backend)
    ):
        from .convert_model import convert_command

        return convert_command(args)
    args.file = args.source
    loaded = conv_from_args(args)
    from ._inspect import load_warnings

    warnings = load_warnings(args.source, backend=args.backend)  # a Theano file: say what tf.keras would get wrong
    if not args.json:
        print(f"read {loaded.conv!r} from {args.source}")
        print_assumptions(loaded, args.source)
        for text in warnings:
            print(f"note: {text}")
    report = save(loaded.conv, args.output, to=args.to, overwrite=args.force, parents=args.parents)
    if args.json:
        extra = {"hyperparameters": hyperparameters_json(loaded), "warnings": list(warnings), "wrote": args.output}
        print(json.dumps({**report.to_dict(), **extra}, indent=2))
    else:
        print(report)
        print(f"wrote {args.output}")
    return 0


def _port_args(p: argparse.ArgumentParser) -> None:
    from ._port_cli import add_arguments

    add_arguments(p)


@command("port", "load a Keras model's weights into your own PyTorch class, verified; save its state_dict", _port_args)
def _port(args: argparse.Namespace) -> int:
    from ._port_cli import run

    return run(args)


def _diagnose_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kernel", required=True, help=".npy kernel exactly as the framework returned it")
    p.add_argument("--bias", help=".npy bias (omit for none)")
    p.add_argument("--x", required=True, help=".npy input the framework was given")
    p.add_argument("--y", required=True, help=".npy output the framework produced")
    p.add_argument("--stride", type=int)
    p.add_argument("--dilation", type=int)
    p.add_argument("--groups", type=int)
    p.add_argument("--top", type=int, default=3, help="how many near misses to show")
    p.add_argument("--json", action="store_true")


@command("diagnose", "which layout, flip and padding reproduce a framework's output", _diagnose_args)
def _diagnose(args: argparse.Namespace) -> int:
    from ._diagnose import diagnose

    result = diagnose(
        load_npy(args.kernel, "kernel"), load_npy(args.bias, "bias"), load_npy(args.x, "input x"), load_npy(args.y, "output y"),
        stride=args.stride, dilation=args.dilation, groups=args.groups, top=args.top,
    )
    print(json.dumps(result.to_dict(), indent=2) if args.json else result)
    return 0 if result.matches else 1


# -- entry point ---------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layoutconv",
        description="Move Conv1D weights between Keras, PyTorch and ONNX, and prove nothing changed.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"layoutconv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; exit status 0 success, 1 a check failed, 2 bad input (one line on stderr, no traceback)."""
    import os

    from . import frameworks
    from .errors import VerificationError

    # TensorFlow's C++ start-up chatter is no business of a command's user.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    frameworks.QUIET_IMPORTS = True
    parser = build_parser()
    args = parser.parse_args(argv)
    prefix = f"layoutconv {args.command}: error:"
    try:
        return args.run(args)
    except BrokenPipeError:
        # the reader went away (`layoutconv inspect f.h5 | head`): stop quietly, as Unix tools do
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # Python's exit flush must not raise again
        except (OSError, ValueError, AttributeError):
            pass  # not a real file (a test's stand-in): nothing to flush at exit
        return 0
    except VerificationError as exc:
        print(f"{prefix} {exc}", file=sys.stderr)
        return 1
    except LayoutError as exc:
        print(f"{prefix} {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{prefix} {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the command line never shows a framework's traceback
        if os.environ.get("LAYOUTCONV_DEBUG"):
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        print(
            f"{prefix} unexpected {type(exc).__name__}: {first}. This is a bug in layoutconv or an input it "
            "should have refused; please report it (LAYOUTCONV_DEBUG=1 shows the traceback).",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
