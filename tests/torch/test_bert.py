"""A pretrained BERT sentence encoder (all-MiniLM-L6-v2), called with dict inputs, at W8A8."""

import numpy as np
import pytest
import torch

import lowbit
from lowbit.runtime import session
from lowbit.zoo import mean_pooled, pretrained_sentence_encoder

CALIBRATION = [
    "A man is eating food.", "A man is riding a horse.", "The new movie is awesome.",
    "The cat sits outside on the wall.", "A woman is playing the violin.",
    "Two men pushed carts through the woods.", "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.", "Someone in a gorilla costume is playing a set of drums.",
    "The new phone has a much better camera than the old one.", "It is raining heavily in the city.",
    "Quantization makes neural networks smaller and faster.", "The train leaves the station at noon.",
    "She bought fresh bread at the bakery this morning.", "Stock prices rose after the announcement.",
    "He forgot his umbrella at the office again.",
]
HELD_OUT = [
    "A man is playing a guitar.", "Children are playing football in the park.",
    "The stock market fell sharply today.", "A chef is cooking pasta in a busy kitchen.",
    "The library is closed on Sundays.", "Birds are singing in the trees outside my window.",
    "Edge devices run small integer models.", "The meeting was moved to next Tuesday.",
]


@pytest.fixture(scope="module")
def encoder():
    return pretrained_sentence_encoder()


def _batch(tokenizer, sentences):
    encoded = tokenizer(sentences, padding=True, return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


@pytest.fixture(scope="module")
def bert_sim(encoder):
    model, tokenizer = encoder
    data = [_batch(tokenizer, CALIBRATION[i:i + 8]) for i in range(0, len(CALIBRATION), 8)]
    with pytest.warns(UserWarning, match="torch.fx could not trace BertModel"):
        return lowbit.quantize(model, data, target="transformer")


@pytest.fixture(scope="module")
def embeddings(encoder, bert_sim, tmp_path_factory):
    model, tokenizer = encoder
    batch = _batch(tokenizer, HELD_OUT)
    with torch.no_grad():
        reference = mean_pooled(model(**batch).last_hidden_state, batch["attention_mask"])
        simulated = mean_pooled(bert_sim(batch).last_hidden_state, batch["attention_mask"])
    paths = bert_sim.export(tmp_path_factory.mktemp("bert"), name="minilm")
    hidden = session(paths.qdq_onnx, threads=2).run(None, {k: v.numpy() for k, v in batch.items()})[0]
    executed = mean_pooled(torch.from_numpy(hidden), batch["attention_mask"])
    return reference, simulated, executed


def _cosine(a, b):
    return float(torch.nn.functional.cosine_similarity(a, b).mean())


@pytest.mark.slow
def test_w8a8_sentence_embeddings_stay_close_to_fp32(embeddings):
    reference, simulated, _ = embeddings
    cosine = _cosine(reference, simulated)
    print(f"\nBERT W8A8 sim vs FP32 mean cosine on held-out sentences: {cosine:.4f}")
    assert cosine >= 0.98


def test_onnxruntime_runs_the_export_as_simulated(embeddings):
    reference, simulated, executed = embeddings
    print(f"\nBERT onnxruntime QDQ vs FP32 cosine {_cosine(reference, executed):.4f}, "
          f"vs sim {_cosine(simulated, executed):.6f}")
    assert _cosine(reference, executed) >= 0.98
    # The sim predicts the executed model better than FP32 does. They are not bit-identical: float
    # attention (torch SDPA vs onnxruntime's fused ops) flips ~0.1 % of quantized inputs by one LSB, and
    # on CPUs without VNNI the int16 pair saturation of every MatMul amplifies such flips (0.994 here).
    assert _cosine(simulated, executed) >= max(0.99, _cosine(reference, executed))


def test_weights_and_matmul_inputs_are_quantized_residual_stream_is_not(encoder, bert_sim):
    model, _ = encoder
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    embeddings = sum(isinstance(m, torch.nn.Embedding) for m in model.modules())
    roles = bert_sim.summary()["quantizers"]
    assert roles["weight"] == linears + embeddings
    assert roles["input"] == linears  # every Linear reads quantized input
    assert "output" not in roles  # LayerNorm, residual adds and the attention mask stay float
    assert bert_sim.capture_mode == "leaf-modules"


@pytest.mark.slow
def test_encodings_file_names_exist_in_the_fp32_graph(bert_sim, tmp_path):
    import json
    import onnx
    paths = bert_sim.export(tmp_path, name="minilm")
    graph = onnx.load(str(paths.onnx)).graph
    tensors = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output} | \
        {i.name for i in graph.input}
    document = json.loads(paths.encodings.read_text())
    names = [e["name"] for e in document["activation_encodings"] + document["param_encodings"]]
    assert names and all(name in tensors for name in names)
    assert np.isfinite([s for e in document["param_encodings"] for s in e["scale"]]).all()
