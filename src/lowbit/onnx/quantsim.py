"""QuantSim for an ONNX model: the plan's quantizers calibrated by running the graph in onnxruntime;
the simulation is the exported QDQ graph itself, run by onnxruntime as it will run in deployment."""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from lowbit.data import checked_calls
from lowbit.errors import DataError, NotCalibratedError, SpecError
from lowbit.onnx.calibrate import observe, run_in_slices, slice_rows
from lowbit.onnx.feeds import GraphInputs, as_tensors
from lowbit.fidelity import verify_export
from lowbit.kernels import Kernels, resolve_kernels
from lowbit.onnx.fixed_point_adds import fixed_point_adds
from lowbit.onnx.float_softmaxes import float_softmaxes
from lowbit.onnx.float_weights import with_float_weights
from lowbit.onnx.load import load_model
from lowbit.graph.placement import carries_input, plan, returned_values
from lowbit.graph.view import GraphView
from lowbit.onnx.graph_view import GraphFacts, float_op_types
from lowbit.onnx.qdq_insert import tagged_model
from lowbit.progress import progress
from lowbit.qdq.files import ExportPaths, quantizer_args, require_encodings, write_export
from lowbit.qdq.split import SplitGraph, split_exported_graph
from lowbit.quant.apply_encodings import apply_encodings_file
from lowbit.quant.encoding import Encoding
from lowbit.quant.encodings_file import read_encodings
from lowbit.quant.fake_quant import fake_quantize
from lowbit.quant.quantizer import Quantizer
from lowbit.quant.range_estimators import make_weight_estimator, model_output_scheme
from lowbit.runtime import session
from lowbit.target import load_target
from lowbit.target.points import PlannedQuantizers, check_sim_options


def sim_kernels(runtime: str | Kernels | None) -> Kernels:
    """The kernels an ONNX sim can predict: onnxruntime on this machine (it runs there), or LiteRT's (its additions
    rewritten into their fixed-point arithmetic); SpecError for another onnxruntime kind."""
    host, asked = resolve_kernels(None), resolve_kernels(runtime)
    if asked != host and not asked.fixed_point_add:
        raise SpecError(f"the ONNX front end's sim is onnxruntime on this machine, which runs {host.name} kernels; "
                        f"it cannot predict {asked.name} (the PyTorch front end can: QuantSim(..., runtime=...))")
    return asked


class OnnxQuantSim(PlannedQuantizers):
    """Simulates an ONNX model as the target runs it: ``calibrate(data)``, then call it on a batch
    (outputs as numpy arrays) or ``export`` the three files. The caller's model is never modified."""

    def __init__(self, model, target="default", param_bits: int | None = None, act_bits: int | None = None,
                 scheme: str = "minmax", per_channel: bool | None = None, threads: int | None = None,
                 runtime: str | Kernels | None = None):
        check_sim_options(param_bits, act_bits, scheme)
        target = load_target(target)
        self.runtime = sim_kernels(runtime if runtime is not None else target.runtime)
        self.model = load_model(model)
        self.target = target.for_runtime(self.runtime.name).with_overrides(param_bits, act_bits, per_channel)
        self.scheme = scheme
        self.threads = threads
        self.inputs = GraphInputs(self.model)
        view = GraphFacts(self.model).view()
        self.points = plan(view, self.target)
        returned = returned_values(view)
        self._quantizers = {p.key: Quantizer(p.spec, model_output_scheme(scheme) if p.node in returned
                                             and p.role == "output" else scheme) for p in self.points}
        self.calibration_seconds: float | None = None
        self.technique_results: tuple[str, ...] = ()
        self.float_model: onnx.ModelProto | None = None  # the model before AdaRound or bias correction wrote into it
        self._float_where_off = False
        self._split: SplitGraph | None = None
        self._split_key: tuple = (frozenset(), frozenset())  # quantizers off, layers with float weights
        self._session = None
        self._rows: dict[tuple, int] = {}  # samples per run, by the feeds' shapes

    def __deepcopy__(self, memo) -> "OnnxQuantSim":
        """A copy without the cached QDQ graph and onnxruntime session (rebuilt on its next run)."""
        copied = object.__new__(type(self))
        memo[id(self)] = copied
        for name, value in self.__dict__.items():
            setattr(copied, name, None if name in ("_split", "_session") else copy.deepcopy(value, memo))
        return copied

    def calibrate(self, data, transform=None, num_batches: int | None = None) -> "OnnxQuantSim":
        """Compute every encoding: weights from their values, activations from ``data`` batches."""
        start = time.perf_counter()
        self.calibrate_weights()
        feeds = self.feeds_of(data, transform, num_batches)
        activations = {k: q for k, q in self._quantizers.items() if self.point(k).role != "weight"}
        estimators: dict[str, list] = {}
        for key, quantizer in activations.items():
            quantizer.start_calibration()
            estimators.setdefault(self.point(key).tensor, []).append(quantizer.estimator)
        for feed in feeds:
            for name in [n for n in estimators if n in self.inputs.names]:
                for estimator in estimators[name]:
                    estimator.observe(torch.from_numpy(feed[name]))
        inner = {name: group for name, group in estimators.items() if name not in self.inputs.names}
        observe(self._with_quantized_weights(), inner, feeds, self.threads,
                progress=lambda it, total: progress(it, "calibrate", total))
        for key, quantizer in activations.items():
            if quantizer.estimator.batches == 0:
                raise NotCalibratedError(f"quantizer {key!r} saw no data during calibration")
            quantizer.finish_calibration(constraints=self.point(key).constraints)
        self.calibration_seconds = time.perf_counter() - start
        return self

    def calibrate_weights(self) -> None:
        """Weight encodings from the initializers' values; encodings frozen by a technique are kept."""
        initializers = {t.name: t for t in self.model.graph.initializer}
        for key, quantizer in self._quantizers.items():
            point = self.point(key)
            if point.role != "weight" or quantizer.frozen:
                continue
            weight = torch.from_numpy(numpy_helper.to_array(initializers[point.module]).astype(np.float32))
            quantizer.estimator = make_weight_estimator(quantizer.scheme, quantizer.spec)
            quantizer.estimator.observe(weight)
            quantizer.finish_calibration(shape=weight.shape)
        self._split = self._session = None

    def weights_changed(self) -> None:
        """Forget the QDQ graph built from the old initializers or encodings (a technique changed ``self.model``, or
        encodings were set directly, as mixed precision does)."""
        self._split = self._session = None

    encodings_changed = weights_changed

    def _with_quantized_weights(self) -> onnx.ModelProto:
        """The FP32 model with each quantized weight replaced by its fake-quantized values: activation
        ranges are observed as the quantized model produces them (as the torch front end does)."""
        result = copy.deepcopy(self.model)
        weights = {p.module: self._quantizers[p.key] for p in self.points if p.role == "weight"}
        for tensor in result.graph.initializer:
            if tensor.name in weights:
                stored = numpy_helper.to_array(tensor)
                quantized = fake_quantize(torch.from_numpy(stored.astype(np.float32)), weights[tensor.name].encoding)
                tensor.CopyFrom(numpy_helper.from_array(quantized.numpy().astype(stored.dtype), tensor.name))
        return result

    def feeds_of(self, data, transform=None, num_batches: int | None = None) -> list[dict[str, np.ndarray]]:
        """Every batch of ``data`` (arrays or tensors; single, tuple or dict) as checked onnxruntime feeds."""
        if isinstance(data, np.ndarray):
            raise DataError("data must be an iterable of batches (e.g. a list of arrays), not a single "
                            "array: wrap it as [array]")
        prepare = (lambda item: as_tensors(transform(item))) if transform else as_tensors
        calls = checked_calls(data, prepare, num_batches)
        return [self.inputs.feeds(args, kwargs) for args, kwargs in calls]

    def __call__(self, *args, **kwargs) -> list[np.ndarray]:
        """The simulated outputs for one batch, given as the model is called (see :meth:`run_on`)."""
        return self.run_on([kwargs if kwargs else (args[0] if len(args) == 1 else args)])[0]

    def output_lsbs(self) -> list[float]:
        """Scale of the quantizer on each model output; NaN where one is not quantized per tensor."""
        view = GraphFacts(self.model).view()
        lsbs = []
        for output in view.outputs:
            quantizer = self._quantizers.get(view.source(output, carries_input))
            usable = quantizer is not None and quantizer.encoding is not None and quantizer.spec.axis is None
            lsbs.append(float(quantizer.encoding.scale) if usable else float("nan"))
        return lsbs

    def output_lsb(self) -> float:
        """Scale of the quantizer on the model's first output; NaN if it is not quantized per tensor."""
        return self.output_lsbs()[0]

    def run_on(self, data, transform=None, num_batches: int | None = None) -> list[list[np.ndarray]]:
        """The simulated outputs of every batch of ``data``: the QDQ graph in onnxruntime with its
        integer kernels, i.e. what the exported ``NAME.qdq.onnx`` computes on this machine (image batches
        in slices, as calibration runs them: the same per-sample values)."""
        split = self.split()
        if self._session is None:
            graph = fixed_point_adds(split.qdq_model) if self.runtime.fixed_point_add else split.qdq_model
            graph = graph if self.runtime.table_softmax else float_softmaxes(graph)
            self._session = session(graph.SerializeToString(), threads=self.threads)
        feeds = self.feeds_of(data, transform, num_batches)
        names = [output.name for output in self._session.get_outputs()]
        rows = self._slice_rows(feeds[0]) if feeds else slice_rows(self.model)
        return [run_in_slices(self._session, names, feed, rows) for feed in progress(feeds, "run", len(feeds))]

    def _slice_rows(self, feed: dict[str, np.ndarray]) -> int:
        """:func:`slice_rows` for batches shaped like ``feed``, worked out once per shape (sizing a
        dynamic H x W infers the graph's shapes again)."""
        shapes = tuple((name, value.shape) for name, value in feed.items())
        if shapes not in self._rows:
            self._rows[shapes] = slice_rows(self.model, feed)
        return self._rows[shapes]

    def split(self) -> SplitGraph:
        """FP32 graph, encodings and integer QDQ graph of the current encodings; quantizers switched
        ``"off"`` (as analysis does) get no Q/DQ pair; within :meth:`float_where_off` weights off are the float ones."""
        off = frozenset(key for key, quantizer in self._quantizers.items() if quantizer.mode == "off")
        restored = frozenset(p.node for p in self.points if p.role == "weight" and p.key in off) \
            if self._float_where_off and self.float_model is not None else frozenset()
        if self._split is None or (off, restored) != self._split_key:
            require_encodings(self._quantizers)
            points = [p for p in self.points if p.key not in off]
            model = with_float_weights(self.model, self.float_model, restored)
            self._split = split_exported_graph(tagged_model(model, points, self._quantizers), self._quantizers, {})
            self._split_key, self._session = (off, restored), None
        return self._split

    def keep_float_model(self) -> None:
        """Remember the model as it is now, unless remembered before: call it before a technique first rewrites
        weights or biases (AdaRound, bias correction)."""
        if self.float_model is None:
            self.float_model = copy.deepcopy(self.model)

    @contextmanager
    def float_where_off(self):
        """Within the block, layers whose weight quantizer is off run with the float weight and bias that AdaRound
        or bias correction replaced (:meth:`keep_float_model`)."""
        self._float_where_off = True
        try:
            yield
        finally:
            self._float_where_off = False

    def weight(self, key: str) -> torch.Tensor:
        """The float weight quantizer ``key`` quantizes, as the initializer stores it."""
        stored = next(t for t in self.model.graph.initializer if t.name == self.point(key).module)
        return torch.from_numpy(numpy_helper.to_array(stored).astype(np.float32))

    def layer_costs(self, groups, args, kwargs) -> dict[str, tuple[int, int, int]]:
        """(MACs, weights, output elements) of each layer group (``lowbit.analysis.layers``) on one sample."""
        from lowbit.onnx.layer_costs import layer_costs
        return layer_costs(self, groups, args, kwargs)

    def forked_outputs(self, calls, groups, plans, enabled_only) -> dict | None:
        """None: every configuration of an ONNX sim runs the whole graph in onnxruntime."""
        return None

    def quantizer_values(self, args, kwargs, keys) -> tuple[dict, dict]:
        """Per quantizer key, on one call: the float graph's value at its tensor and the sim's quantized one."""
        from lowbit.onnx.graph_values import quantizer_values
        return quantizer_values(self, args, kwargs, keys)

    def graph_view(self) -> GraphView:
        """The model's graph as ``lowbit.graph`` sees it."""
        return GraphFacts(self.model).view()

    def load_encodings(self, path) -> "OnnxQuantSim":
        """Set every encoding from an AIMET encodings file (keys: the tensor names ``export`` writes)."""
        apply_encodings_file(self._quantizers, self._exported_names(), read_encodings(path), path)
        self._split = self._session = None
        return self

    def _exported_names(self) -> dict[str, str]:
        """Quantizer key → its encoding's tensor name in the exported files (quantized model outputs and op inputs are
        renamed), read from an export with stand-in encodings where the sim has none yet."""
        if self.is_calibrated:
            return self.split().tensor_names
        missing = [key for key, quantizer in self._quantizers.items() if quantizer.encoding is None]
        initializers = {t.name: t for t in self.model.graph.initializer}
        for key in missing:
            spec = self._quantizers[key].spec
            channels = () if spec.axis is None else (initializers[self.point(key).module].dims[spec.axis],)
            self._quantizers[key].encoding = Encoding.from_range(spec, -torch.ones(channels), torch.ones(channels))
        try:
            return split_exported_graph(tagged_model(self.model, self.points, self._quantizers),
                                        self._quantizers, {}).tensor_names
        finally:
            for key in missing:
                self._quantizers[key].forget_encoding()

    def export(self, out_dir, name: str = "model", verify=None) -> ExportPaths:
        """Write NAME.onnx, NAME.encodings and NAME.qdq.onnx under ``out_dir``; returns their paths. With
        ``verify`` (batches), onnxruntime runs the written QDQ file on them and ``paths.fidelity`` compares
        every output with the sim's (which runs the same graph in onnxruntime)."""
        paths = write_export(self.split(), Path(out_dir), name, quantizer_args(self.target, self.scheme))
        return paths if verify is None else verify_export(
            self, paths, verify, note="the ONNX front end's sim is this QDQ graph run by onnxruntime")

    def export_tflite(self, path, input_shape=None, verify=None, integer_io: bool = False):
        """Write an int8 LiteRT file of this sim's encodings; with ``verify`` (batches) LiteRT runs it and
        ``.fidelity`` compares with the sim (onnxruntime's kernels: additions can differ by an output step);
        ``integer_io``: int8 inputs and outputs on the sim's grids (a fully integer model)."""
        from lowbit.litert import export_tflite
        return export_tflite(self, path, input_shape, verify, integer_io)

    def export_torchscript(self, path):
        """SpecError: an ONNX sim runs in onnxruntime; TorchScript comes from a PyTorch model's sim."""
        raise SpecError(f"cannot write {path}: an ONNX model's sim has no TorchScript form; quantize the PyTorch "
                        f"model for sim.export_torchscript, or deploy this sim's QDQ file (sim.export)")

    def first_divergence(self, qdq_path, batch) -> None:
        """None: this sim runs the exported QDQ graph in onnxruntime, so the two never part."""
        return None

    def summary(self) -> dict:
        """Counts of quantizers by role, the target, and the op types left in float (with counts)."""
        left = float_op_types(self.model)
        note = "left in float: " + ", ".join(f"{op} ×{n}" for op, n in sorted(left.items())) if left else ""
        return {"capture": "onnx", "note": note, "quantizers": self.quantizer_counts(), "target": self.target.name,
                "runtime": self.runtime.name, "float_ops": left}
