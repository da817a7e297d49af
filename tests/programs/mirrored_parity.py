"""The mirrored half of tests/test_training.py's parity test: `parity_fit` under two logical CPUs, plain and
with gradient checkpointing.

Devices are fixed when TensorFlow starts, so two logical CPUs need a process of
their own. Prints the result as one line of JSON.
"""

import json
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import test_training  # noqa: E402

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
runs = {"plain": test_training.parity_fit(strategy), "checkpointed": test_training.parity_fit(strategy, True)}
json.dump(runs, sys.stdout)
