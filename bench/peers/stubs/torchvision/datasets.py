"""Stand-ins for the torchvision.datasets names aimet_torch refers to (its fake-data helper)."""

from . import unavailable

FakeData = unavailable("datasets.FakeData")
