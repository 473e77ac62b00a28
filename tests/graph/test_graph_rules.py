"""The graph rules written once over the graph protocol, checked on hand-built views against what
their definitions say: placement (supergroups, pass-through ops, masks, opaque calls, op inputs) and
cross-layer-equalization chains."""

from __future__ import annotations

import math

from lowbit.graph.chains import equalization_chains
from lowbit.graph.placement import plan, returned_values
from lowbit.graph.view import GraphView, Layer, Op
from lowbit.target import load_target


def _mixed_view() -> GraphView:
    """x → Conv → Relu → Flatten ─┐
    ids → Gather(embedding) ──────Add → Mul(· , Cast(keep)) → opaque call, LSTM (both returned)."""
    ops = [Op("conv", "Conv", ("x",), ("c",), weight="conv.w", weight_owner="conv", weight_axis=0),
           Op("relu", "Relu", ("c",), ("r",)),
           Op("flat", "Flatten", ("r",), ("f",)),
           Op("emb", "Gather", ("", "ids"), ("e",), weight="emb.w", weight_owner="emb.w"),
           Op("add", "Add", ("f", "e"), ("a",)),
           Op("cast", "Cast", ("keep",), ("kf",)),
           Op("mul", "Mul", ("a", "kf"), ("m",)),
           Op("block", "MyBlock", ("m",), ("o1",), opaque=True),
           Op("lstm", "LSTM", ("m",), ("o2",))]
    return GraphView(ops, ["x", "ids", "keep"], ["o1", "o2"], {"x", "c", "r", "f", "e", "a", "kf", "m", "o1", "o2"})


def test_placement_follows_its_rules_on_a_hand_built_graph():
    view = _mixed_view()
    points = plan(view, load_target("default"))
    # x: model input; c: fused into Conv+Relu; f: Flatten carries r; kf: a mask; o2: LSTM runs in float
    assert [(p.key, p.role) for p in points] == [
        ("x", "input"), ("conv.w", "weight"), ("r", "output"), ("emb.w", "weight"), ("e", "output"),
        ("a", "output"), ("m", "output"), ("o1", "output")]
    assert view.is_mask_like("kf") and not view.is_mask_like("e") and not view.is_mask_like("m")
    assert next(p for p in points if p.key == "conv.w").spec.axis == 0
    assert returned_values(view) == {"o1", "o2"}


def test_op_inputs_are_quantized_unless_their_source_already_is():
    config = load_target("default").to_json()
    config["model_input"] = {"is_input_quantized": "False"}
    config["op_type"]["MatMul"] = {"is_input_quantized": "True"}
    ops = [Op("rx", "Reshape", ("x",), ("xr",)),
           Op("relu", "Relu", ("y",), ("yr",)),
           Op("mm", "MatMul", ("xr", "yr"), ("z",)),
           Op("mm2", "MatMul", ("z", "xr"), ("w",))]
    view = GraphView(ops, ["x", "y"], ["w"], {"x", "xr", "y", "yr", "z", "w"})
    points = plan(view, load_target(config))
    inputs = [(p.key, p.argument) for p in points if p.role == "input"]
    # xr carries the unquantized input x, so each MatMul reading it quantizes it; yr and z have their own
    assert inputs == [("mm_input0", "xr"), ("mm2_input1", "xr")]
    assert {p.key for p in points if p.role == "output"} == {"yr", "z", "w"}


def _conv(name, source, out, in_channels, out_channels, groups=1, weight=None):
    return Op(name, "Conv", (source,), (out,), weight=weight or f"{name}.w", weight_owner=name,
              layer=Layer(in_channels, out_channels, groups))


def test_equalization_chains_pass_relu_and_relu6_and_stop_elsewhere():
    ops = [_conv("c1", "x", "h1", 3, 8), Op("r1", "Relu", ("h1",), ("a1",)),
           _conv("dw", "a1", "h2", 8, 8, groups=8), Op("clip", "Clip", ("h2",), ("a2",), clip=(0.0, 6.0)),
           Op("drop", "Dropout", ("a2",), ("d2",)),
           _conv("c3", "d2", "h3", 8, 4), Op("sig", "Sigmoid", ("h3",), ("s3",)),
           _conv("c4", "s3", "h4", 4, 4),                            # Sigmoid: no chain c3 → c4
           _conv("c5", "h4", "h5", 4, 6), Op("clip2", "Clip", ("h5",), ("a5",), clip=(0.0, math.inf)),
           _conv("c6", "a5", "h6", 5, 2),                            # 6 channels out, 5 in: no chain
           _conv("s1", "h6", "h7", 2, 2, weight="shared.w"), _conv("s2", "h7", "h8", 2, 2, weight="shared.w")]
    view = GraphView(ops, ["x"], ["h8"], set())
    chains = equalization_chains(view)
    assert [[op.name for op in chain.layers] for chain in chains] == [["c1", "dw", "c3"], ["c4", "c5"]]
    first = chains[0]
    assert [link.relu for link in first.links] == [True, True]
    assert [[op.name for op in link.relu6] for link in first.links] == [[], ["clip"]]


def test_a_layer_whose_output_has_two_readers_ends_a_chain():
    ops = [_conv("c1", "x", "h1", 3, 4), _conv("c2", "h1", "h2", 4, 4), Op("add", "Add", ("h1", "h2"), ("y",))]
    assert equalization_chains(GraphView(ops, ["x"], ["y"], set())) == []
