"""Serves SavedModels where neither Keras nor keras_tlnode can be imported, for tests/test_export.py.

Reads one case per line of stdin, each as soon as it is exported: JSON
`[name, {"path", "endpoints", "inputs"}]`. Loads each SavedModel twice, with
`tf.saved_model.load` and with the TF1 session loader that `saved_model_cli run`
and TF Serving use, and at the end prints "REPORT " and, as JSON, what it could
import and each case's signatures and outputs by each loader.
"""

import json
import sys

# Neither Keras nor the package (nor tfp, the teacher's library) can be imported here.
# (None in sys.modules blocks an import, as the import system documents; typeshed types the values as modules.)
BLOCKED = ("keras", "keras_tlnode", "tf_keras", "tensorflow_probability")
for name in BLOCKED:
    sys.modules[name] = None  # type: ignore[assignment]
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def importable(name):
    try:
        __import__(name)
        return True
    except ImportError:
        return False


def session_run(path, signature_keys, inputs):
    # The TF1 session loader: what `saved_model_cli run` and TF Serving use.
    results = {}
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta = tf.compat.v1.saved_model.load(session, ["serve"], path)
        for key in signature_keys:
            signature = meta.signature_def[key]
            (feed,), (fetch,) = signature.inputs.values(), signature.outputs.values()
            for batch, x in inputs.items():
                results[key, batch] = session.run(fetch.name, {feed.name: x})
    return results


report = {"importable": {name: importable(name) for name in BLOCKED}, "cases": {}}
for line in sys.stdin:  # one case per line, each as soon as it is exported
    name, case = json.loads(line)
    served = tf.saved_model.load(case["path"])
    out = report["cases"][name] = {"signatures": {}, "outputs": {}}
    for key in served.signatures:
        args = [
            [a.shape.as_list(), a.dtype.name] for a in served.signatures[key].structured_input_signature[1].values()
        ]
        out["signatures"][key] = args[0] if len(args) == 1 else args  # a flow's `sample` takes (n, seed)
    inputs = {batch: np.asarray(x, np.float32) for batch, x in case["inputs"].items()}
    # "serve" is also TF Serving's default signature, "serving_default".
    keys = {endpoint: "serving_default" if endpoint == "serve" else endpoint for endpoint in case["endpoints"]}
    by_session = session_run(case["path"], keys.values(), inputs)
    for endpoint, key in keys.items():
        signature = served.signatures[key]
        (arg,) = signature.structured_input_signature[1].values()
        for batch, x in inputs.items():
            results = {
                "attribute": getattr(served, endpoint)(tf.constant(x)),  # served.serve(x)
                "signature": next(iter(signature(**{arg.name: tf.constant(x)}).values())),
                "session": by_session[key, batch],
            }
            out["outputs"].setdefault(endpoint, {})[batch] = {k: np.asarray(v).tolist() for k, v in results.items()}
print("REPORT " + json.dumps(report))
