"""lowbit.runtime.session: a session whose threads do not spin computes what a default session computes, and carries
onnxruntime's setting that stops the spinning."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lowbit.compression.files import write_model_files
from lowbit.runtime import session


def test_a_session_without_spinning_runs_the_same_model(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4)).eval()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x).detach().numpy()
    _, path = write_model_files(model, x, tmp_path, "net")
    default, sleeping = session(path, threads=2), session(path, threads=2, spinning=False)
    assert sleeping.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    feed = {default.get_inputs()[0].name: x.numpy()}
    np.testing.assert_array_equal(sleeping.run(None, feed)[0], default.run(None, feed)[0])
    np.testing.assert_allclose(default.run(None, feed)[0], expected, rtol=1e-5, atol=1e-5)
