"""``layoutconv port``: load a model's weights into your own PyTorch class from the command line, verified, then saved.

    layoutconv port model.h5 mynet.py:Net --input-shape 2,4,34 --output net.pt

``mynet.py:Net`` (or ``package.module:Net``) is your code: the class is imported
and built with no arguments.  The input shape is what your ``forward`` takes
(several ``--input-shape`` for several inputs); the example inputs are seeded
normal values.  The ported ``state_dict`` is written only when the port is
verified (or, for a weights-only file without ``--architecture``, when every
layer fits), read back, and renamed into place.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from .errors import ConfigError, OutputError, fail


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="a Keras model file (.h5, .keras) or a weights-only file with --architecture")
    p.add_argument("target", help="your PyTorch class: path/to/file.py:ClassName or package.module:ClassName (built with no arguments)")
    p.add_argument("--input-shape", action="append", required=True, help="the shape forward takes, e.g. 2,4,34 (repeat for several inputs)")
    p.add_argument("--architecture", help="model.json for a weights-only Keras file")
    p.add_argument("--mapping", action="append", default=[], help="source_layer=target.module, to pin a pair (repeatable)")
    p.add_argument("--output", help="where to save the ported state_dict (.pt or .safetensors)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("--seed", type=int, default=0)


def _load_class(spec: str) -> Any:
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise fail(ConfigError, "Cannot tell which class to port into", "path/to/file.py:ClassName or package.module:ClassName", repr(spec))
    if where.endswith(".py") or os.sep in where:
        path = Path(where)
        if not path.is_file():
            raise fail(ConfigError, f"{where} is not a file", "the Python file that defines your model", repr(where))
        loader = importlib.util.spec_from_file_location(f"layoutconv_user_{path.stem}", path)
        assert loader is not None and loader.loader is not None
        module = importlib.util.module_from_spec(loader)
        sys.modules[loader.name] = module
        loader.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    cls = getattr(module, name, None)
    if cls is None:
        raise fail(ConfigError, f"{where} defines no {name!r}", "a class defined in that file", f"names {sorted(n for n in dir(module) if not n.startswith('_'))[:20]}")
    return cls


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(v <= 0 for v in shape):
        raise fail(ConfigError, "Invalid --input-shape", "positive integers separated by commas, batch first, e.g. 2,4,34", repr(text))
    return shape


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .convert import _check_output
    from .porting import port

    mapping = {}
    for item in args.mapping:
        src, sep, tgt = item.partition("=")
        if not sep:
            raise fail(ConfigError, "Invalid --mapping", "source_layer=target.module", repr(item))
        mapping[src] = tgt
    if args.output:
        if Path(args.output).suffix.lower() not in (".pt", ".pth", ".safetensors"):
            raise fail(ConfigError, "Invalid --output", "a .pt, .pth or .safetensors file name", repr(args.output))
        _check_output(Path(args.output), args.force, False)
    net = _load_class(args.target)()
    rng = np.random.default_rng(args.seed)
    example = tuple(torch.from_numpy(rng.standard_normal(_shape(s)).astype(np.float32)) for s in args.input_shape)
    report = port(args.source, net, example_inputs=example if len(example) > 1 else example[0],
                  mapping=mapping or None, architecture=args.architecture)
    print(report)
    if args.output:
        _save(net.state_dict(), Path(args.output))
        print(f"wrote {args.output}")
    return 0


def _save(state: dict[str, Any], final: Path) -> None:
    """Write, read back, compare every tensor, then rename into place (nothing is left on failure)."""
    import torch

    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=final.suffix, dir=final.parent)
    os.close(fd)
    try:
        state = {k: v.detach().contiguous() for k, v in state.items()}
        if final.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file, save_file

            save_file(state, tmp)
            back = load_file(tmp)
        else:
            torch.save(state, tmp)
            back = torch.load(tmp, weights_only=True)
        if sorted(back) != sorted(state) or any(not torch.equal(back[k], v) or back[k].dtype != v.dtype for k, v in state.items()):
            raise fail(OutputError, f"The file written to {str(final)!r} does not hold the state_dict", "every tensor read back unchanged", "a difference", "Nothing was written.")
        os.replace(tmp, final)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
