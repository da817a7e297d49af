"""One worker of tests/test_multi_worker.py's two-worker cluster on localhost.

Usage: multi_worker_parity.py INDEX PORT,PORT. Runs the parity fit of
tests/test_training.py under `MultiWorkerMirroredStrategy`, then a plain
`keras.Model`'s fit (the canary of keras-team/keras#20585), and prints the
result as one line of JSON.
"""

import json
import os
import sys

index, ports = int(sys.argv[1]), sys.argv[2].split(",")
os.environ["TF_CONFIG"] = json.dumps(
    {"cluster": {"worker": [f"localhost:{port}" for port in ports]}, "task": {"type": "worker", "index": index}}
)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import test_training  # noqa: E402

strategy = tf.distribute.MultiWorkerMirroredStrategy()
result = test_training.parity_fit(strategy)
try:
    with strategy.scope():
        inputs = keras.Input((2,))
        plain = keras.Model(inputs, keras.layers.Dense(2)(inputs))
        plain.compile(optimizer="sgd", loss="mse")
    x = np.zeros((32, 2), "float32")
    plain.fit(x, x, batch_size=16, epochs=1, verbose=0)
    result["plain_keras_fit"] = "ok"
except Exception as error:
    result["plain_keras_fit"] = f"{type(error).__name__}: {str(error)[:300]}"
print(json.dumps(result), flush=True)
