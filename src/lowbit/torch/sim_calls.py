"""A PyTorch sim's batches as calls ready to run (checked, on the sim's device, images channels-last), and the
model's errors on them as one line naming the batch."""

from __future__ import annotations

import contextlib

from lowbit.data import channels_last_call, checked_calls, move_call, tensors_of
from lowbit.errors import InputError, LowbitError, first_line


def sim_calls(data, transform, num_batches: int | None, device):
    """Yield (args, kwargs) for each batch of ``data``: InputError for a batch without a torch tensor."""
    for count, (args, kwargs) in enumerate(checked_calls(data, transform, num_batches)):
        if not tensors_of(args, kwargs):
            raise InputError(f"batch {count} holds no torch tensor: a PyTorch sim takes tensors "
                             f"(numpy arrays: torch.from_numpy)")
        yield channels_last_call(*move_call(args, kwargs, device))


@contextlib.contextmanager
def batch_errors(count: int):
    """A non-lowbit error of the model on batch ``count`` becomes one InputError line."""
    try:
        yield
    except LowbitError:
        raise
    except Exception as error:
        raise InputError(f"batch {count} does not fit the model: {first_line(error)}") from error
