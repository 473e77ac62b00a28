"""QuantSim for PyTorch: a copy of the model with quantizers in place, calibrated on data."""

from __future__ import annotations

import itertools
import time
import warnings
from collections import Counter

import torch
from torch import nn

from lowbit.data import as_call, batch_count, tensors_of
from lowbit.distributed import check_ranks, pool_estimators, shard
from lowbit.errors import InputError, NotCalibratedError, first_line
from lowbit.kernels import Kernels, resolve_kernels
from lowbit.progress import progress
from lowbit.graph.placement import plan, returned_values
from lowbit.graph.view import GraphView
from lowbit.quant.quantizer import Quantizer
from lowbit.quant.range_estimators import make_weight_estimator
from lowbit.target import load_target
from lowbit.target.points import PlannedQuantizers, check_sim_options
from lowbit.torch.encodings_io import apply_encodings
from lowbit.torch.capture import (check_example, node_dtypes, placeholder_values, trace,
                                  with_scripts_as_graphs)
from lowbit.torch.module_graph import as_module_graph, functional_layer_types
from lowbit.torch.insert import insert_quantizers, source_quantizer
from lowbit.torch.leaf_fallback import wrap_leaf_modules
from lowbit.torch.adapters import AdapterBank
from lowbit.torch.lora import working_copy
from lowbit.torch.op_types import module_op_type
from lowbit.torch.activation_bounds import activation_bounds
from lowbit.torch.graph_view import fx_view, node_op_type
from lowbit.torch.sim_calls import batch_errors, sim_calls
from lowbit.torch.integer_add import IntegerAdd
from lowbit.torch.integer_softmax import IntegerSoftmax
from lowbit.torch.weight_quantized import WeightQuantized


class QuantSim(PlannedQuantizers, nn.Module):
    """Simulates the model as the target runs it, on a copy; ``calibrate(data)`` then call it like the model.
    Models torch.fx cannot trace fall back to quantizing leaf modules (``capture_mode`` says which, and why)."""

    def __init__(self, model: nn.Module, example_input, target="default", param_bits: int | None = None,
                 act_bits: int | None = None, scheme: str = "minmax", per_channel: bool | None = None,
                 runtime: str | Kernels | None = None):
        super().__init__()
        check_sim_options(param_bits, act_bits, scheme)
        if not isinstance(model, nn.Module):
            raise InputError(f"QuantSim needs a torch.nn.Module, got {type(model).__name__}")
        target = load_target(target)
        kernels = resolve_kernels(runtime if runtime is not None else target.runtime)
        self.target = target.for_runtime(kernels.name).with_overrides(param_bits, act_bits, per_channel)
        self.scheme = scheme
        args, kwargs = as_call(example_input)
        if not tensors_of(args, kwargs):
            raise InputError(f"example input must be a tensor, a tuple or a dict of tensors, "
                             f"got {type(example_input).__name__}")
        self.example_input = example_input
        copied = with_scripts_as_graphs(working_copy(model).eval(), example_input)
        self.adapters = AdapterBank.of(copied)
        check_example(copied, args, kwargs)
        self.capture_mode, self.capture_note = "fx", ""
        try:
            graph_module = trace(copied, args, kwargs)
        except Exception as error:
            reason = first_line(error)
            self.capture_mode = "leaf-modules"
            self.capture_note = (f"torch.fx could not trace {type(model).__name__} ({reason}); quantizing "
                                 f"leaf modules only: functional ops stay in float")
            warnings.warn(self.capture_note, stacklevel=2)
        if self.capture_mode == "fx":
            graph_module = as_module_graph(graph_module)
            dtypes = node_dtypes(graph_module, placeholder_values(graph_module, copied, args, kwargs))
            view = fx_view(graph_module, dtypes)
            self.points = plan(view, self.target)
            self._quantizers = insert_quantizers(graph_module, self.points, scheme, returned_values(view))
            self.model, self._graph_view = graph_module, view
        else:
            self._graph_view = None
            self.model, self.points, self._quantizers = wrap_leaf_modules(copied, self.target, scheme)
        self.calibration_seconds: float | None = None
        self.technique_results: tuple[str, ...] = ()
        self.runtime = kernels
        self.eval()  # as the model it copies: sim.train() for quantization-aware training

    @property
    def runtime(self) -> Kernels:
        """The runtime kernels this sim predicts (default: this machine's onnxruntime); assign a name
        of :data:`lowbit.kernels.KERNELS` to predict another CPU kind. The target's runtime-dependent
        choices (cpu-int8's weight bits) are made when the sim is built, from ``QuantSim(runtime=...)``."""
        return self._kernels

    @runtime.setter
    def runtime(self, runtime: str | Kernels | None) -> None:
        self._kernels = resolve_kernels(runtime)
        for module in self.model.modules():
            if isinstance(module, WeightQuantized):
                module.int16_pairs = self._kernels.int16_pairs
            if isinstance(module, IntegerAdd):
                module.fixed_point = self._kernels.fixed_point_add
            if isinstance(module, IntegerSoftmax):
                module.table = self._kernels.table_softmax

    def forward(self, *args, **kwargs):
        self._require_encodings()
        if len(args) == 1 and not kwargs and isinstance(args[0], dict):
            return self.model(**args[0])
        return self.model(*args, **kwargs)

    def calibrate(self, data, transform=None, num_batches: int | None = None) -> "QuantSim":
        """Compute every encoding: weights from their values, activations from ``data`` batches. With several LoRA
        adapters, the base's ranges cover every adapter and each adapter gets its own encodings."""
        start = time.perf_counter()
        check_ranks(self.structure, self._device())
        self.calibrate_weights()
        activations = {k: q for k, q in self._quantizers.items() if self.point(k).role != "weight"}
        for quantizer in activations.values():
            quantizer.start_calibration()
        try:
            batches = shard(data if num_batches is None else itertools.islice(data, num_batches))
            if self.adapters is not None and len(self.adapters.weights) > 1 and self.capture_mode == "fx":
                from lowbit.torch.adapters import observe_every_adapter
                observe_every_adapter(self, batches, transform)
            else:
                self.stream(batches, transform, None, "calibrate")
            pool_estimators(activations)
            for key, quantizer in activations.items():
                if quantizer.estimator.batches == 0:
                    raise NotCalibratedError(f"quantizer {key!r} saw no data during calibration "
                                             f"(its branch never ran)")
                quantizer.finish_calibration(constraints=self.point(key).constraints)
        except BaseException:
            for quantizer in activations.values():
                quantizer.mode = "quantize" if quantizer.encoding is not None else "off"
            raise
        self.calibration_seconds = time.perf_counter() - start
        return self

    def structure(self) -> list[str]:
        """One line per quantizer (key, role, spec) and per parameter (name, shape): what ranks must share."""
        return ([f"{p.key} {p.role} {p.spec}" for p in self.points]
                + [f"{name} {tuple(value.shape)}" for name, value in self.model.named_parameters()])

    def learn_ranges(self, enabled: bool = True, keys=None) -> "QuantSim":
        """Make every active quantizer's (or those of ``keys``) scale and zero point trainable (they join
        ``sim.parameters()``), or fix them again at their learned values; see :meth:`Quantizer.learn_ranges`.
        A grid after a ReLU, ReLU6 or clamp stays inside its range, as onnxruntime's fused kernels need. Weight
        scales AdaRound froze stay fixed: a moved scale would re-round every weight it chose a rounding for."""
        points = {point.key: point for point in self.points}
        for key, quantizer in self._quantizers.items():
            kept = enabled and quantizer.frozen_by == "adaround"
            if quantizer.mode == "quantize" and (keys is None or key in keys) and not kept:
                point = points[key]
                weight = point.role == "weight"
                quantizer.learn_ranges(enabled, batched=not weight,
                                       bounds=None if weight else activation_bounds(self.model, point.tensor))
        return self

    def fold_batchnorm(self) -> list[tuple[str, str]]:
        """Fold each BatchNorm after a convolution (a sim built with ``fold_batchnorm=False``, after training) into
        its weights, bias and per-channel weight scales, keeping the trained integers; returns (layer, bn) pairs."""
        from lowbit.training.batchnorm_to_scale import fold_batchnorm_to_scale
        return fold_batchnorm_to_scale(self)

    def run_on(self, data, transform=None, num_batches: int | None = None) -> list:
        """The simulated outputs of every batch of ``data`` (no gradients), as the model returns them;
        as ``OnnxQuantSim.run_on`` gives its outputs."""
        self._require_encodings()
        outputs = []
        self.stream(data, transform, num_batches, "run", outputs.append)
        return outputs

    def _require_encodings(self) -> None:
        """NotCalibratedError where a quantizer has no encoding and is not being calibrated."""
        if any(q.encoding is None and q.mode != "calibrate" for q in self._quantizers.values()):
            raise NotCalibratedError("the sim has quantizers without encodings: call sim.calibrate(data) first")

    def stream(self, data, transform=None, num_batches: int | None = None, description: str = "run",
               consume=None) -> int:
        """Run the sim (no gradients) on every checked batch of ``data``, image batches in channels-last
        memory (same values, faster convolutions), handing each output to ``consume``; returns the
        batch count."""
        count = 0
        with torch.no_grad():
            calls = sim_calls(data, transform, num_batches, self._device())
            for args, kwargs in progress(calls, description, batch_count(data, num_batches)):
                with batch_errors(count):
                    output = self.model(*args, **kwargs)
                if consume is not None:
                    consume(output)
                count += 1
        return count

    def calibrate_weights(self) -> None:
        """Weight encodings from the current weight values (no data needed): each channel's min and max, or for
        ``sqnr`` the lowest-MSE clipping of the weights. Encodings frozen by :meth:`Quantizer.freeze` (AdaRound,
        sequential MSE) are kept."""
        for key, quantizer in self._quantizers.items():
            if self.point(key).role == "weight" and not getattr(quantizer, "frozen", False):
                self.calibrate_weight(key)

    def calibrate_weight(self, key: str) -> None:
        """The encoding of weight quantizer ``key`` from its weight's current values."""
        quantizer = self._quantizers[key]
        weight = self.model.get_submodule(self.point(key).module).layer.weight.detach()
        quantizer.estimator = make_weight_estimator(quantizer.scheme, quantizer.spec)
        quantizer.estimator.observe(weight)
        quantizer.finish_calibration(shape=weight.shape)

    def export(self, out_dir, name: str = "model", verify=None):
        """Write NAME.onnx, NAME.encodings and NAME.qdq.onnx under ``out_dir``; returns their paths. With
        ``verify`` (batches), onnxruntime runs the QDQ file on them and ``paths.fidelity`` compares every
        output with the sim's."""
        from lowbit.fidelity import verify_export
        from lowbit.torch.export import export_sim
        paths = export_sim(self, out_dir, name)
        return paths if verify is None else verify_export(self, paths, verify)

    def export_tflite(self, path, input_shape=None, verify=None, integer_io: bool = False):
        """Write an int8 LiteRT file computing this sim's encodings in LiteRT's kernels (``runtime="litert-cpu"`` makes
        the sim predict them); with ``verify`` (batches) LiteRT runs it and ``.fidelity`` compares with the sim;
        ``integer_io``: int8 inputs and outputs on the sim's grids (a fully integer model)."""
        from lowbit.litert import export_tflite
        return export_tflite(self, path, input_shape, verify, integer_io)

    def set_adapter(self, name: str) -> "QuantSim":
        """Run LoRA adapter ``name`` (a sim of a peft model): its weights and, once calibrated, its encodings; the
        base's encodings stay bit for bit."""
        from lowbit.torch.adapters import set_adapter
        set_adapter(self, name)
        return self

    def load_adapter(self, source, name: str, scaling: float | None = None) -> "QuantSim":
        """Add LoRA adapter ``name`` from a peft ``save_pretrained`` folder or state dict (same layers and shapes as
        the sim's adapters); ``set_adapter(name)`` then ``calibrate_adapter(data)`` to run it."""
        from lowbit.torch.adapters import load_adapter
        load_adapter(self, source, name, scaling)
        return self

    def calibrate_adapter(self, data, transform=None, num_batches: int | None = None) -> "QuantSim":
        """Encodings of the running adapter's quantizers only (its weights, its layers' outputs and the quantizer
        after its sum), as a full calibration would compute them; the base's encodings are untouched."""
        from lowbit.torch.adapters import calibrate_adapter
        calibrate_adapter(self, data, transform, num_batches)
        return self

    def export_adapter(self, out_dir, name: str | None = None):
        """Write adapter ``name``'s (default: the running one's) weights as NAME.safetensors, keyed by the exported
        ONNX file's tensor names, and its encodings as NAME.encodings; returns their paths."""
        from lowbit.torch.adapters import export_adapter
        return export_adapter(self, out_dir, name)

    def export_torchscript(self, path):
        """Write a TorchScript file (``torch.jit.load``, no lowbit needed) computing this sim's outputs bit for bit
        on this CPU kind, batch size free; returns its path."""
        from lowbit.torch.torchscript import export_torchscript
        return export_torchscript(self, path)

    def weight(self, key: str) -> torch.Tensor:
        """The float weight quantizer ``key`` quantizes."""
        return self.model.get_submodule(self.point(key).module).layer.weight

    def layer_costs(self, groups, args, kwargs) -> dict[str, tuple[int, int, int]]:
        """(MACs, weights, output elements) of each layer group (``lowbit.analysis.layers``) on one sample."""
        from lowbit.torch.layer_costs import layer_costs
        return layer_costs(self, groups, args, kwargs)

    def forked_outputs(self, calls, groups, plans, enabled_only) -> dict | None:
        """Each layer group's configurations run from shared starts (``lowbit.torch.forked_runs``), or None
        where every configuration must run the whole model."""
        from lowbit.torch.forked_runs import forked_outputs
        return forked_outputs(self, calls, groups, plans, enabled_only)

    def float_where_off(self):
        """A context in which layers whose weight quantizer is off compute with the float weight and bias that
        AdaRound or bias correction replaced (``lowbit.torch.float_parameters``)."""
        from lowbit.torch.float_parameters import float_where_off
        return float_where_off(self.model)

    def quantizer_values(self, args, kwargs, keys) -> tuple[dict, dict]:
        """Per quantizer key, on one call: its input in the float model and its output in the sim."""
        from lowbit.torch.quantizer_values import quantizer_values
        return quantizer_values(self, args, kwargs, keys)

    def graph_view(self) -> GraphView | None:
        """The model's graph as ``lowbit.graph`` sees it (before quantizers went in); None when torch.fx
        could not trace it (leaf modules only)."""
        return self._graph_view

    def load_encodings(self, path) -> "QuantSim":
        """Set the encodings from an AIMET encodings file (format 1.0.0 or 0.6.1); returns the sim."""
        apply_encodings(self, path)
        return self

    def first_divergence(self, qdq_path, batch) -> str | None:
        """The first quantizer (and its tensor) where onnxruntime running ``qdq_path`` on ``batch``
        parts from this sim by more than one grid step; None when none does."""
        from lowbit.torch.divergence import first_divergence
        return first_divergence(self, qdq_path, batch)

    def summary(self) -> dict:
        """Counts of quantizers by role, how the graph was captured, the weighted op types left in float
        (layers whose weights the graph computes) and those simulated in float where onnxruntime runs an
        integer kernel (Linear layers, matmuls of two quantized tensors), with counts."""
        left = functional_layer_types(self.model) if self.capture_mode == "fx" else {}
        simulated = Counter(module_op_type(m.layer) for m in self.model.modules()
                            if isinstance(m, WeightQuantized) and m.integer_kernel_in_float())
        if self.capture_mode == "fx":
            simulated.update("MatMul" for n in self.model.graph.nodes  # every input on a quantizer's grid
                             if node_op_type(self.model, n) == "MatMul" and n.all_input_nodes
                             and all(source_quantizer(self.model, i) is not None for i in n.all_input_nodes))
        notes = [self.capture_note] if self.capture_note else []
        if left:
            notes.append("weights left in float: " + ", ".join(f"{op} ×{n}" for op, n in sorted(left.items())))
        if simulated:
            notes.append("simulated in float, within one step of onnxruntime's integer kernels: "
                         + ", ".join(f"{op} ×{n}" for op, n in sorted(simulated.items())))
        return {"capture": self.capture_mode, "note": "; ".join(notes), "quantizers": self.quantizer_counts(),
                "target": self.target.name, "runtime": self.runtime.name, "float_ops": left,
                "float_simulated": dict(simulated)}

    def _device(self) -> torch.device:
        tensor = next(itertools.chain(self.model.parameters(), self.model.buffers()), None)
        return torch.device("cpu") if tensor is None else tensor.device
