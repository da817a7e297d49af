"""Serving: SavedModel export of TL-NODE models, served where keras_tlnode (and Keras) cannot be imported.

The exports of every case are written once (module fixtures) and served by one
child process, which loads each SavedModel twice: with `tf.saved_model.load`
and with the TF1 session loader that `saved_model_cli run` and TF Serving use.
The child serves each case as soon as it is written, while this process
computes that case's in-memory outputs and exports the next one.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys

import child_process
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2

import keras_tlnode as kt

STATE = 3
TOLERANCE = 1e-6  # max abs difference, float32
BATCHES = {"batch1": 1, "batch3": 3, "batch7": 7}  # three batch sizes through one dynamic-batch signature


# ------------------------------------------------------------------ the models


class Forced(keras.layers.Layer):
    """A time-dependent field f(x, t) = tanh(W x) + sin(t) b."""

    def build(self, input_shape):
        self.dense = keras.layers.Dense(input_shape[0][-1], activation="tanh")
        self.dense.build(input_shape[0])
        self.b = self.add_weight(shape=(input_shape[0][-1],), initializer="ones")

    def call(self, inputs):
        x, t = inputs
        return self.dense(x) + tf.sin(t) * self.b


class SubclassedTLNODE(kt.TLNODEModel):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.ode = kt.TaylorLagrangeODE(
            field(), order=2, num_steps=2, duration=0.2, correction=kt.MidpointCorrection(hidden_units=(4,))
        )
        self.head = keras.layers.Dense(STATE)

    def call(self, x):
        return self.head(self.ode(x))


def field() -> keras.Sequential:
    return keras.Sequential([keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(STATE)])


def ode(order=1, correction="vector", trajectory=False, method="taylor_lagrange", steps=2, **kwargs):
    corrections = {
        None: None,
        "vector": lambda: kt.MidpointCorrection(hidden_units=(4,)),
        "matrix": lambda: kt.MidpointCorrection(mode="matrix", hidden_units=(4,), use_step_size=True),
    }
    common = dict(num_steps=steps, duration=0.2, return_trajectory=trajectory, **kwargs)
    vector_field = common.pop("vector_field", None) or field()
    if method != "taylor_lagrange":
        return kt.FixedStepODE(vector_field, method=method, **common)
    return kt.TaylorLagrangeODE(
        vector_field,
        order=order,
        correction=corrections[correction]() if correction else None,
        remainder_weight=1e-2,
        **common,
    )


def functional(layer, cls=keras.Model):
    inputs = keras.Input((STATE,), name="state")
    return cls(inputs, layer(inputs))


def sequential(layer):
    return keras.Sequential([keras.Input((STATE,)), layer])


def encoder_ode_decoder():
    inputs = keras.Input((STATE,), name="state")
    latent = keras.layers.Dense(4, name="encoder")(inputs)
    layer = ode(
        order=2,
        correction="vector",
        steps=3,
        vector_field=keras.Sequential([keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(4)]),
    )
    return keras.Model(inputs, keras.layers.Dense(STATE, name="decoder")(layer(latent)))


def trained_tlnode():
    """A functional TLNODEModel after one epoch whose every step ran the teacher."""
    model = functional(ode(order=1, correction="vector"), cls=kt.TLNODEModel)
    model.compile(optimizer="adam", loss="mse", correction_every=1, correction_steps=1)
    x = np.random.default_rng(1).uniform(-1, 1, (32, STATE)).astype("float32")
    model.fit(x, np.tanh(x), batch_size=16, epochs=1, verbose=0)
    assert model.correction_optimizer.iterations.numpy() == 2  # the teacher did run
    return model


def subclassed_tlnode():
    model = SubclassedTLNODE()
    model(np.zeros((2, STATE), "float32"))
    return model


class TimeField(keras.layers.Layer):
    """f(z, t) = tanh(W [z, t]): a flow's field."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(STATE, activation="tanh")

    def build(self, input_shape):
        self.dense.build((None, STATE + 1))

    def call(self, inputs):
        z, t = inputs
        return self.dense(tf.concat([z, t], axis=-1))


def flow():
    """A continuous normalizing flow with a correction; its "serve" and "log_prob" endpoints give log p(x)."""
    model = kt.ContinuousNormalizingFlow(TimeField(), num_steps=2, correction=kt.MidpointCorrection(hidden_units=(4,)))
    model(np.zeros((2, STATE), "float32"))
    return model


# name -> (builder, how it is exported). Orders 1-3 x vector/matrix corrections
# x trajectory off/on, as a covering array: each order meets each correction mode
# and each trajectory setting, and each mode meets each setting (all 12
# combinations re-proved the same parity at twice the cost).
CASES = {
    "sequential_o1_vector": (lambda: sequential(ode(1, "vector")), "keras"),
    "functional_o1_matrix_trajectory": (lambda: functional(ode(1, "matrix", trajectory=True)), "keras"),
    "functional_o2_vector_trajectory": (lambda: functional(ode(2, "vector", trajectory=True)), "keras"),
    "functional_o2_matrix": (lambda: functional(ode(2, "matrix")), "keras"),
    "functional_o3_vector": (lambda: functional(ode(3, "vector")), "keras"),
    "sequential_o3_matrix_trajectory": (lambda: sequential(ode(3, "matrix", trajectory=True)), "keras"),
    "taylor_o2_uncorrected": (lambda: functional(ode(2, None)), "keras"),
    # Orders 4-5 through Keras's own export with a dynamic batch (issue 11);
    # order 5 on a one-layer field, as its trace costs in proportion to the field's ops.
    "functional_o4_vector": (lambda: functional(ode(4, "vector")), "keras"),
    "functional_o5_uncorrected": (
        lambda: functional(ode(5, None, vector_field=keras.Sequential([keras.layers.Dense(STATE, activation="tanh")]))),
        "keras",
    ),
    "euler": (lambda: functional(ode(correction=None, method="euler", steps=3)), "keras"),
    "heun_trajectory": (lambda: sequential(ode(correction=None, method="heun", trajectory=True)), "keras"),
    "rk4": (lambda: functional(ode(correction=None, method="rk4")), "keras"),
    "time_dependent_o2": (
        lambda: functional(ode(2, "vector", steps=3, vector_field=Forced(), time_dependent=True, t_initial=0.5)),
        "keras",
    ),
    "tlnode_trained": (trained_tlnode, "keras"),
    "tlnode_subclassed": (subclassed_tlnode, "keras"),
    "helper_encoder_trajectory": (encoder_ode_decoder, "helper"),
    "helper_sequential_trajectory": (lambda: sequential(ode(2, "matrix")), "helper"),
    "helper_subclassed": (subclassed_tlnode, "helper-serve"),
    "helper_flow": (flow, "flow"),
}


def randomize(model: keras.Model, seed: int) -> None:
    """Non-trivial weights everywhere (the corrections' output layers start at zero)."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0.0, 0.4, w.shape).astype(w.dtype) for w in model.get_weights()])


def trajectory_reference(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """The trajectory of the model's ODE layer from what feeds it, by an independent twin layer."""

    def sublayers(layer: keras.Layer):  # models (Sequential, functional, subclassed) list theirs in `layers`
        for sub in getattr(layer, "layers", ()):
            yield sub
            yield from sublayers(sub)

    (layer,) = [sub for sub in sublayers(model) if isinstance(sub, (kt.TaylorLagrangeODE, kt.FixedStepODE))]
    feed = keras.Model(model.input, layer.input) if not isinstance(model, keras.Sequential) else (lambda v: v)
    common = dict(
        num_steps=layer.num_steps,
        duration=layer.duration,
        time_dependent=layer.time_dependent,
        t_initial=layer.t_initial,
        return_trajectory=True,
    )
    if isinstance(layer, kt.FixedStepODE):
        twin = kt.FixedStepODE(layer.vector_field, method=layer.method, **common)
    else:
        twin = kt.TaylorLagrangeODE(layer.vector_field, order=layer.order, correction=layer.correction, **common)
    states = np.asarray(feed(x))
    trajectory = twin(states).numpy()
    np.testing.assert_allclose(trajectory[:, 0], states, atol=0)
    np.testing.assert_allclose(trajectory[:, -1], layer(states).numpy(), atol=1e-6)
    return trajectory


# ------------------------------------------------------------------- fixtures


def predict(model: keras.Model, inputs: dict) -> dict:
    """In-memory outputs for each batch, from one predict call (one trace)."""
    joined = np.concatenate(list(inputs.values()))
    outputs = model.predict(joined, batch_size=len(joined), verbose=0)
    splits = np.cumsum([len(x) for x in inputs.values()])[:-1]
    return dict(zip(inputs, np.split(outputs, splits), strict=True))


@pytest.fixture(scope="module")
def exported_and_served(tmp_path_factory):
    """Every case built, randomized, exported and handed to the server; with its inputs and in-memory outputs."""
    root = tmp_path_factory.mktemp("exports")
    rng = np.random.default_rng(0)
    cases = {}
    with Server(tmp_path_factory.mktemp("served")) as server:
        for seed, (name, (build, how)) in enumerate(CASES.items()):
            keras.utils.set_random_seed(seed)
            model = build()
            randomize(model, seed)
            path = str(root / name / "1")
            if how == "keras":
                model.export(path, verbose=False)
            else:
                kt.export_saved_model(model, path, trajectory=how == "helper")
            inputs = {key: rng.uniform(-1, 1, (size, STATE)).astype("float32") for key, size in BATCHES.items()}
            endpoints = {"helper": ["serve", "trajectory"], "flow": ["log_prob", "serve"]}.get(how, ["serve"])
            server.send(name, path, endpoints, inputs)  # served there while the outputs are computed here
            expected = {"serve": predict(model, inputs)}
            if how == "helper":
                expected["trajectory"] = {key: trajectory_reference(model, x) for key, x in inputs.items()}
            if how == "flow":
                expected["log_prob"] = expected["serve"]
            assert sorted(expected) == endpoints
            cases[name] = {"model": model, "path": path, "inputs": inputs, "expected": expected}
        outcome = server.finish()
    return cases, outcome


@pytest.fixture(scope="module")
def exported(exported_and_served):
    return exported_and_served[0]


class Server:
    """tests/programs/serve_without_keras.py in a fresh interpreter, fed the cases one at a time through its stdin."""

    def __init__(self, directory):
        self._files = [open(os.path.join(directory, name), "w+") for name in ("stdout", "stderr")]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        self._process = subprocess.Popen(
            child_process.command("serve_without_keras.py"),
            stdin=subprocess.PIPE,
            stdout=self._files[0],
            stderr=self._files[1],
            text=True,
            env=env,
        )

    def send(self, name: str, path: str, endpoints: list, inputs: dict) -> None:
        case = {"path": path, "endpoints": endpoints, "inputs": {key: x.tolist() for key, x in inputs.items()}}
        try:
            self._process.stdin.write(json.dumps([name, case]) + "\n")
            self._process.stdin.flush()
        except BrokenPipeError:  # the child died: `finish` reports its stderr
            pass

    def finish(self) -> dict:
        """Waits for the child; its return code, stdout and stderr."""
        try:
            self._process.stdin.close()
        except BrokenPipeError:
            pass
        returncode = self._process.wait(timeout=600)
        outcome = {"returncode": returncode}
        for key, handle in zip(("stdout", "stderr"), self._files, strict=True):
            handle.seek(0)
            outcome[key] = handle.read()
        return outcome

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        for handle in self._files:
            handle.close()


@pytest.fixture(scope="module")
def served(exported_and_served) -> dict:
    """The child's report: what it could import, each case's signatures and outputs by each loader."""
    outcome = exported_and_served[1]
    assert outcome["returncode"] == 0, outcome["stderr"][-5000:]
    (line,) = [line for line in outcome["stdout"].splitlines() if line.startswith("REPORT ")]
    report = json.loads(line[len("REPORT ") :])
    assert set(report["cases"]) == set(CASES)
    return report


# ---------------------------------------------------------------- parity tests


def test_server_process_could_not_import_keras_or_the_package(served):
    assert served["importable"] == {name: False for name in served["importable"]}


@pytest.mark.parametrize("name", list(CASES))
def test_served_equals_in_memory_for_any_batch_size(name, exported, served):
    case, report = exported[name], served["cases"][name]
    for endpoint, expected in case["expected"].items():
        shape, dtype = report["signatures"]["serving_default" if endpoint == "serve" else endpoint]
        assert shape == [None, STATE] and dtype == "float32"  # dynamic batch
        for key, want in expected.items():
            for loader, got in report["outputs"][endpoint][key].items():
                got = np.asarray(got, np.float32)
                assert got.shape == want.shape, (endpoint, key, loader)
                assert np.max(np.abs(got - want)) <= TOLERANCE, (endpoint, key, loader, np.max(np.abs(got - want)))


def test_keras_export_names_the_endpoints_as_tf_serving_expects(served):
    report = served["cases"]["functional_o2_vector_trajectory"]
    assert set(report["signatures"]) == {"serve", "serving_default"}
    helper = served["cases"]["helper_encoder_trajectory"]
    assert set(helper["signatures"]) == {"serve", "serving_default", "trajectory"}
    assert helper["signatures"]["trajectory"] == [[None, STATE], "float32"]
    flow = served["cases"]["helper_flow"]["signatures"]
    assert set(flow) == {"serve", "serving_default", "log_prob", "sample"}
    assert sorted(flow["sample"]) == [[[], "int32"], [[2], "int32"]]  # n and seed


def test_trajectory_endpoint_has_every_state(exported):
    case = exported["helper_encoder_trajectory"]
    trajectory = case["expected"]["trajectory"]["batch7"]
    assert trajectory.shape == (7, 4, 4)  # (batch, num_steps + 1, latent)


# ------------------------------------------------------ what the export holds


def serving_graph(path: str, endpoint: str = "serving_default") -> dict:
    """Op types, node and function names and dtypes reachable from a SavedModel signature."""
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as handle:
        saved.ParseFromString(handle.read())
    (meta,) = saved.meta_graphs
    roots = {tensor.name.split(":")[0] for tensor in meta.signature_def[endpoint].outputs.values()}
    return walk(meta.graph_def, [n for n in meta.graph_def.node if n.name in roots])


def walk(graph_def, nodes) -> dict:
    """Everything reachable from `nodes` through the function library."""
    library = {function.signature.name: function for function in graph_def.library.function}
    found = {"ops": collections.Counter(), "names": set(), "functions": set(), "dtypes": set()}
    pending = []

    def visit(node_defs):
        for node in node_defs:
            found["ops"][node.op] += 1
            found["names"].add(node.name)
            if node.op in library:
                pending.append(node.op)
            for attr in node.attr.values():
                pending.extend([attr.func.name] if attr.func.name else [])
                pending.extend(function.name for function in attr.list.func)
                found["dtypes"].update(types_pb2.DataType.Name(t) for t in [attr.type, *attr.list.type] if t)

    visit(nodes)
    while pending:
        name = pending.pop()
        if name not in found["functions"]:
            found["functions"].add(name)
            visit(library[name].node_def)
    return found


# Ops of the training step only (optimizer and metric updates, the correction
# phase's tf.cond, the teacher's finiteness checks); a float64 tensor in a
# float32 model marks the teacher, which solves in float64.
TRAINING_ONLY_OPS = {"AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp", "If", "StatelessIf", "IsFinite"}


def training_markers(found: dict) -> dict:
    names = found["names"] | found["functions"]
    return {
        "teacher names": sorted(n for n in names if "dormand" in n.lower())[:3],
        "float64": "DT_DOUBLE" in found["dtypes"],
        "training ops": sorted(op for op in found["ops"] if op in TRAINING_ONLY_OPS or op.startswith("ResourceApply")),
    }


@pytest.mark.parametrize("name", ["tlnode_trained", "tlnode_subclassed", "helper_encoder_trajectory"])
def test_exported_graph_holds_only_the_inference_path(name, exported):
    found = serving_graph(exported[name]["path"])
    assert training_markers(found) == {"teacher names": [], "float64": False, "training ops": []}
    # The inference path is there: the rollout loop, the field, its weights,
    # and the nested Taylor pass as a function call of its own.
    assert {"While", "MatMul", "Tanh", "ReadVariableOp", "StatefulPartitionedCall"} <= set(found["ops"])
    assert any("_traced_pass" in function for function in found["functions"])


def test_graph_walk_finds_the_teacher_in_the_training_step(exported):
    """Control for the test above: the same walk flags this very model's train_step."""
    model = exported["tlnode_trained"]["model"]
    spec = tf.TensorSpec((None, STATE), tf.float32)
    step = tf.function(lambda x, y: model.train_step((x, y)), autograph=False).get_concrete_function(spec, spec)
    graph = step.graph.as_graph_def()
    markers = training_markers(walk(graph, graph.node))
    assert markers["teacher names"] and markers["float64"]
    assert {"AssignVariableOp", "If", "IsFinite"} <= set(markers["training ops"])


@pytest.mark.parametrize(
    "name, captured", [("tlnode_trained", "_all_variables"), ("helper_encoder_trajectory", "_captured_variables")]
)
def test_export_saves_the_model_weights_and_no_optimizer_state(name, captured, exported):
    case = exported[name]
    weights = sorted(tuple(w.shape) for w in case["model"].weights)
    saved = tf.train.list_variables(os.path.join(case["path"], "variables", "variables"))
    # Each weight twice: as the Keras variable and as the tf.Variable that the
    # functions capture; nothing else (no optimizer slots, no iteration counts).
    assert {key.split("/")[0] for key, _ in saved} == {"_CHECKPOINTABLE_OBJECT_GRAPH", "variables", captured}
    for prefix in ("variables/", f"{captured}/"):
        assert sorted(tuple(shape) for key, shape in saved if key.startswith(prefix)) == weights


# --------------------------------------------------------- export_saved_model


def test_tf_serving_layout_is_accepted_by_saved_model_cli(tmp_path):
    keras.utils.set_random_seed(0)
    model = functional(ode(1, "vector"))
    kt.export_saved_model(model, tmp_path / "tlnode" / "1", trajectory=True)
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    run = subprocess.run(
        [cli, "show", "--dir", str(tmp_path / "tlnode" / "1"), "--all"],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    signatures = run.stdout.split("signature_def['")
    serving = next(block for block in signatures if block.startswith("serving_default']"))
    trajectory = next(block for block in signatures if block.startswith("trajectory']"))
    assert "inputs['state']" in serving and "shape: (-1, 3)" in serving
    assert "Method name is: tensorflow/serving/predict" in serving
    assert "shape: (-1, 3, 3)" in trajectory  # (batch, num_steps + 1, state)


def test_export_saved_model_traces_each_endpoint_once(tmp_path, monkeypatch):
    traces = []
    call = kt.TaylorLagrangeODE.call
    monkeypatch.setattr(
        kt.TaylorLagrangeODE, "call", lambda self, x, training=None: traces.append(1) or call(self, x, training)
    )
    model = functional(ode(1, "vector"))
    kt.export_saved_model(model, tmp_path / "helper", trajectory=True)
    assert len(traces) == 2
    traces.clear()
    model.export(str(tmp_path / "keras"), verbose=False)
    assert len(traces) == 3  # Keras's export, for comparison (README: export times)


def test_trajectory_endpoint_needs_one_known_layer(tmp_path):
    inputs = keras.Input((STATE,))
    first, second = ode(1), ode(1)
    two = keras.Model(inputs, second(first(inputs)))
    with pytest.raises(ValueError, match="exactly one TaylorLagrangeODE"):
        kt.export_saved_model(two, tmp_path / "two", trajectory=True)
    with pytest.raises(ValueError, match="not part of the model"):
        kt.export_saved_model(two, tmp_path / "other", trajectory=ode(1))
    with pytest.raises(ValueError, match="functional or Sequential"):
        kt.export_saved_model(subclassed_tlnode(), tmp_path / "sub", trajectory=True)
    kt.export_saved_model(two, tmp_path / "chosen", trajectory=second)
    served = tf.saved_model.load(str(tmp_path / "chosen"))
    x = np.random.default_rng(0).uniform(-1, 1, (4, STATE)).astype("float32")
    states = served.trajectory(x).numpy()
    np.testing.assert_allclose(states[:, 0], first(x).numpy(), atol=1e-6)
    np.testing.assert_allclose(states[:, -1], two(x).numpy(), atol=1e-6)


def test_chunk_size_is_deprecated_and_still_chunks(tmp_path):
    keras.utils.set_random_seed(4)
    model = functional(ode(4, "vector", vector_field=keras.Sequential([keras.layers.Dense(STATE, activation="tanh")])))
    randomize(model, 4)
    path = str(tmp_path / "o4" / "1")
    with pytest.warns(DeprecationWarning, match="chunk_size"):
        kt.export_saved_model(model, path, chunk_size=4)
    served = tf.saved_model.load(path)
    x = np.random.default_rng(4).uniform(-1, 1, (9, STATE)).astype("float32")
    expected = model.predict(x, batch_size=len(x), verbose=0)
    for size in (0, 1, 9):  # none, less than and more than one chunk (padded)
        np.testing.assert_allclose(served.serve(tf.constant(x[:size])).numpy(), expected[:size], rtol=0, atol=TOLERANCE)


# --------------------------------------------------------------------- TFLite


def tflite_run(blob: bytes, x: np.ndarray) -> np.ndarray:
    interpreter = tf.lite.Interpreter(model_content=blob)
    runner = interpreter.get_signature_runner("serving_default")
    (name,) = interpreter.get_signature_list()["serving_default"]["inputs"]
    (output,) = runner(**{name: x}).values()
    return output


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
def test_tflite_converts_a_fixed_batch_export_to_builtin_ops(tmp_path):
    """docs/usage.md, "TensorFlow Lite": with a fixed batch size, the orders tested here convert to builtin ops only."""
    keras.utils.set_random_seed(3)
    model = functional(ode(1, "vector"))
    randomize(model, 3)
    model.export(str(tmp_path / "fixed"), verbose=False, input_signature=[tf.TensorSpec((4, STATE), tf.float32)])
    blob = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "fixed")).convert()
    x = np.random.default_rng(3).uniform(-1, 1, (4, STATE)).astype("float32")
    assert np.max(np.abs(tflite_run(blob, x) - model.predict(x, verbose=0))) <= TOLERANCE


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
def test_tflite_converts_a_dynamic_batch_export_to_builtin_ops(tmp_path):
    """The final-state rollout holds no TensorArray, so the default converter handles a dynamic batch."""
    keras.utils.set_random_seed(3)
    model = functional(ode(1, "vector"))
    randomize(model, 3)
    model.export(str(tmp_path / "dynamic"), verbose=False)
    blob = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "dynamic")).convert()
    for batch in (1, 6):
        x = np.random.default_rng(batch).uniform(-1, 1, (batch, STATE)).astype("float32")
        assert np.max(np.abs(tflite_run(blob, x) - model.predict(x, verbose=0))) <= TOLERANCE


# -------------------------------------------------------------------- example


@pytest.mark.slow
def test_example_trains_exports_and_serves(tmp_path, capsys):
    from script_loader import load_example

    example = load_example("export_and_serve")
    result = example.main(["--dir", str(tmp_path), "--samples", "256", "--epochs", "2", "--repeats", "3"])
    assert os.path.isdir(tmp_path / "1" / "variables")
    assert result["parity"] <= TOLERANCE
    assert result["plain_tf"]["keras_loaded"] is False
    assert len(result["response"]["predictions"]) == 2
    out = capsys.readouterr().out
    assert "curl -X POST http://localhost:8501/v1/models/tlnode:predict" in out
