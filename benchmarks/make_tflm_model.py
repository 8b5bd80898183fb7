"""Writes the demo network as a fully int8 TensorFlow Lite model, for timing TFLM in benchmarks/c_kernels.py.

Not run by the benchmark: its output is committed as benchmarks/data/demo_int8.tflite (and the one-op
benchmarks/data/trivial_int8.tflite that measures the cost of a call), so the benchmark needs only the
`tflite-micro` package. Needs TensorFlow (tested with tensorflow-cpu 2.21.0, Python 3.11), kept out of
npukit's own environment:

    python3.11 -m venv /work/tf-venv && /work/tf-venv/bin/pip install tensorflow-cpu==2.21.0
    /work/tf-venv/bin/python benchmarks/make_tflm_model.py

The layers are those of npukit.models.mnist1d_cnn(): input 1x40, three convolutions of kernel 5, stride 1,
padding 2 ("same"), 32 channels, each with its batch norm folded and a ReLU (fused into the conv, as
both toolchains do), max pooling by 2 after the second and third, and a linear layer 320 -> 10. A 1-d
convolution is written as a 2-d one over a 1x40 image with 1x5 kernels (NHWC), so the converted graph is
only CONV_2D, MAX_POOL_2D, RESHAPE and FULLY_CONNECTED (a Keras Conv1D would add an EXPAND_DIMS and a
RESHAPE around every conv, time that TFLM would be charged for but npukit does not spend). Weights and
biases are random with a fixed seed (no zero biases, which the converter would drop): the time per
inference does not depend on their values; the same bytes come out every run. Post-training full integer
quantization: int8 weights (per output channel) and activations, int32 biases, int8 input and output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

OUT = Path(__file__).resolve().parent / "data"
CHANNELS, LENGTH, CLASSES = 32, 40, 10


def demo_model() -> tf.keras.Model:
    layers = tf.keras.layers
    x = inp = layers.Input(shape=(1, LENGTH, 1), batch_size=1)
    for pool in (False, True, True):
        x = layers.Conv2D(CHANNELS, (1, 5), padding="same", activation="relu", bias_initializer="random_normal")(x)
        if pool:
            x = layers.MaxPooling2D((1, 2))(x)
    x = layers.Flatten()(x)
    return tf.keras.Model(inp, layers.Dense(CLASSES, bias_initializer="random_normal")(x))


def trivial_model() -> tf.keras.Model:
    """One MAX_POOL_2D over two int8 values: what a call costs beyond the network's work."""
    inp = tf.keras.layers.Input(shape=(1, 2, 1), batch_size=1)
    return tf.keras.Model(inp, tf.keras.layers.MaxPooling2D((1, 2))(inp))


def to_int8(model: tf.keras.Model, rng: np.random.Generator) -> bytes:
    shape = (1, *model.input_shape[1:])

    def representative():
        for _ in range(100):
            yield [rng.standard_normal(shape).astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return conv.convert()


def main() -> None:
    tf.keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    OUT.mkdir(exist_ok=True)
    for name, model in (("demo_int8", demo_model()), ("trivial_int8", trivial_model())):
        data = to_int8(model, rng)
        (OUT / f"{name}.tflite").write_bytes(data)
        ops = tf.lite.Interpreter(model_content=data)._get_ops_details()
        print(f"{name}.tflite: {len(data):,} B; ops: {', '.join(op['op_name'] for op in ops)}")


if __name__ == "__main__":
    main()
