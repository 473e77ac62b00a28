"""A job as users run it under torchrun: quantize a ResNet, export, train it one step with lowbit.qat, export
again, then train an epoch.

    python -m torch.distributed.run --standalone --nproc_per_node=2 distributed_job.py OUT BATCH [mismatch]
"""

import os
import sys

import torch
import torch.distributed as dist

import lowbit
from lowbit.zoo import tiny_resnet

out, batch = sys.argv[1], int(sys.argv[2])
if "WORLD_SIZE" in os.environ:
    dist.init_process_group("gloo")
torch.manual_seed(0)
model = tiny_resnet().eval()
images = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
data = [images[i:i + batch] for i in range(0, len(images), batch)]
target = "w8a16" if sys.argv[3:] == ["mismatch"] and dist.get_rank() == 1 else "w4a8"
sim = lowbit.quantize(model, data, target=target)
sim.export(os.path.join(out, "calibrated"), name="tiny")
lowbit.qat(sim, data, steps=1, lr=1e-4)
sim.export(os.path.join(out, "trained"), name="tiny")
print(lowbit.qat(sim, data, epochs=1, lr=1e-4))
if "WORLD_SIZE" in os.environ:
    dist.destroy_process_group()
