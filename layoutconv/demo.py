"""``layoutconv demo``: the question this project was born from, answered end to end.

A user built a Keras ``Conv1D(64, 10)`` on input ``(123, 3)``, summed
``bias[f] + sum(W[:, 0, :, f] * X[0, :10, :])`` by hand, and got 0.512 where
``model.predict`` said 0.408.  The demo builds that layer in Keras 3, moves it
to every framework, proves the outputs equal, and shows the by-hand formula
that is right, and the one that is wrong for a Theano-trained Keras 1 kernel.
"""

from __future__ import annotations

import os

import numpy as np

from . import frameworks
from .conventions import CONVENTIONS
from .verify import verify

FILTERS, KERNEL_SIZE, LENGTH, CHANNELS = 64, 10, 123, 3


def _say(text: str = "") -> None:
    print(text, flush=True)


def run_demo(seed: int = 0) -> int:
    """Run the showcase; return 0 when every check passed."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    frameworks.adapter("keras")  # a clear FrameworkMissingError when Keras is not installed
    import keras
    from . import from_keras
    from ._explain import explain

    rng = np.random.default_rng(seed)
    _say("layoutconv demo: Keras Conv1D(filters=64, kernel_size=10) on an input of shape (123, 3)")
    _say("=" * 88)

    # 1. The user's layer, with trained-looking random weights.
    layer = keras.layers.Conv1D(FILTERS, KERNEL_SIZE)
    layer.build((None, LENGTH, CHANNELS))
    kernel = (rng.standard_normal((KERNEL_SIZE, CHANNELS, FILTERS)) * 0.2).astype("float32")
    bias = (rng.standard_normal(FILTERS) * 0.1).astype("float32")
    layer.set_weights([kernel, bias])
    X = rng.standard_normal((1, LENGTH, CHANNELS)).astype("float32")
    predicted = np.asarray(layer(X))
    W, b = (np.asarray(w) for w in layer.get_weights())
    _say(f"\n1. Keras {keras.__version__}: layer.get_weights() -> kernel {W.shape}, bias {b.shape}")
    _say("   Keras 2/3 store the kernel as (kernel_size, in_channels, filters) = axes 'K I O'.")
    _say("   Keras 1.1-1.2 stored (kernel_size, 1, in_channels, filters) = 'K 1 I O'; PyTorch/ONNX use 'O I K'.")
    _say(f"   model output for this input: shape {predicted.shape}, y[0, t=0, f=0] = {predicted[0, 0, 0]:.6f}")

    # 2. Canonical description.
    conv = from_keras(layer)
    _say(f"\n2. Canonical description: {conv!r}")

    # 3. Every framework, after conversion, against the numpy reference.
    _say("\n3. Converted to every installed framework and run on the same symmetry-breaking input:")
    report = verify(conv, x=X.transpose(0, 2, 1))
    _say("   " + str(report).replace("\n", "\n   "))

    # 4. One output element, by hand.
    _say("\n4. One output element by hand (n=0, f=0, t=0), Keras 2/3 terms:")
    exp = explain(conv, X, (0, 0, 0), source="keras", data_format="channels_last")
    _say("   " + str(exp).replace("\n", "\n   "))
    keras_ok = bool(np.isclose(exp.by_hand_value, predicted[0, 0, 0], rtol=1e-5, atol=1e-5))
    _say(f"   by hand {exp.by_hand_value:.6f} vs model output {predicted[0, 0, 0]:.6f}: {'equal' if keras_ok else 'DIFFERENT'}")

    # 5. The user's question: the same weights stored by Keras 1 with the Theano backend.
    theano = CONVENTIONS["keras1.1-theano"]
    W1 = theano.from_canonical_kernel(conv.kernel)
    f, t = 0, 0
    naive = float(b[f] + np.sum(W1[:, 0, :, f].astype(np.float64) * X[0, t : t + KERNEL_SIZE, :]))
    flipped = float(b[f] + np.sum(W1[::-1, 0, :, f].astype(np.float64) * X[0, t : t + KERNEL_SIZE, :]))
    _say("\n5. Why a by-hand sum can disagree with predict: the same trained layer saved by Keras 1 on Theano.")
    _say(f"   Its file holds W1 with shape {W1.shape} (axes 'K 1 I O'), stored flipped: Theano computed a true")
    _say("   convolution, so tap k of the stored kernel meets input position t + (K - 1 - k).")
    _say(f"   naive   bias[f] + np.sum(W1[:, 0, :, f]    * X[0, 0:10, :]) = {naive: .6f}   <- the user's number")
    _say(f"   correct bias[f] + np.sum(W1[::-1, 0, :, f] * X[0, 0:10, :]) = {flipped: .6f}   <- what predict gives")
    same = theano.conv1d(W1, b).same_weights(conv)
    _say(f"   layoutconv reads W1 back to the identical canonical kernel: {same}")
    _say("   See docs/why-my-by-hand-conv1d-differs.md, `layoutconv explain` and `layoutconv diagnose`.")

    ok = report.passed and keras_ok and exp.agree and same and np.isclose(flipped, predicted[0, 0, 0], rtol=1e-5, atol=1e-5)
    _say("\nDEMO " + ("PASSED" if ok else "FAILED"))
    return 0 if ok else 1
