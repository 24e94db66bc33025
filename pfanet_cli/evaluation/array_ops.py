"""The array operations of the neighbour search (``neighbours.py``) on numpy, or on torch for a device such as
a GPU: products, order statistics and masks stay on the device, and only the few selected entries come back
to the host, where one code orders them whichever backend selected them."""

from __future__ import annotations

import numpy as np


class NumpyOps:
    """numpy (the default). Order statistics are bounds (see :meth:`kth_largest`), which is all the search needs."""

    @staticmethod
    def asarray(array: np.ndarray) -> np.ndarray:
        return array

    @staticmethod
    def host(array: np.ndarray) -> np.ndarray:
        return array

    @staticmethod
    def full(size: int, value: float) -> np.ndarray:
        return np.full(size, value)

    @staticmethod
    def empty(rows: int, cols: int) -> np.ndarray:
        return np.empty((rows, cols))

    @staticmethod
    def maximum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.maximum(a, b)

    @staticmethod
    def cap(a: np.ndarray, value: float) -> np.ndarray:
        return np.minimum(a, value)

    @staticmethod
    def minimum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.minimum(a, b)

    @staticmethod
    def kth_largest(block: np.ndarray, k: int, axis: int = 1) -> np.ndarray:
        """At most the k-th largest value of each row (``axis`` 1) or column (0): the k-th largest of its
        maxima over 2k interleaved groups (k groups hold a value that large), cheaper than a partition."""
        return NumpyOps._kth(block, k, axis, largest=True)

    @staticmethod
    def kth_smallest(block: np.ndarray, k: int, axis: int = 1) -> np.ndarray:
        """At least the k-th smallest value of each row or column (as :meth:`kth_largest`, with minima)."""
        return NumpyOps._kth(block, k, axis, largest=False)

    @staticmethod
    def _kth(block: np.ndarray, k: int, axis: int, largest: bool) -> np.ndarray:
        along = block if axis == 1 else block.T                          # a view: rows are the lines
        length = along.shape[1]
        if length > 4 * k:
            whole = length // (2 * k) * (2 * k)
            if axis == 1:
                grouped = block[:, :whole].reshape(block.shape[0], -1, 2 * k)   # element j in group j mod 2k
                extremes = grouped.max(axis=1) if largest else grouped.min(axis=1)
            else:
                grouped = block[:whole].reshape(-1, 2 * k, block.shape[1])
                extremes = (grouped.max(axis=0) if largest else grouped.min(axis=0)).T
            along = np.concatenate([extremes, along[:, whole:]], axis=1)
        at = along.shape[1] - k if largest else k - 1
        return np.partition(along, at, axis=1)[:, at]

    @staticmethod
    def nonzero(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row and column of each True, row-major (``flatnonzero`` is several times faster than ``nonzero``)."""
        return np.divmod(np.flatnonzero(mask), mask.shape[1])


class TorchOps:
    """torch on ``device``, float64 throughout; order statistics exact."""

    def __init__(self, device: str) -> None:
        import torch  # heavy: only the torch path needs it

        self.torch, self.device = torch, torch.device(device)

    def asarray(self, array: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    @staticmethod
    def host(tensor) -> np.ndarray:
        return tensor.cpu().numpy()

    def full(self, size: int, value: float):
        return self.torch.full((size,), value, dtype=self.torch.float64, device=self.device)

    def empty(self, rows: int, cols: int):
        return self.torch.empty((rows, cols), dtype=self.torch.float64, device=self.device)

    def maximum(self, a, b):
        return self.torch.maximum(a, b)

    def cap(self, a, value: float):
        return self.torch.clamp(a, max=value)

    def minimum(self, a, b):
        return self.torch.minimum(a, b)

    def kth_largest(self, block, k: int, axis: int = 1):
        return self.torch.topk(block, k, dim=axis, sorted=False).values.min(dim=axis).values

    def kth_smallest(self, block, k: int, axis: int = 1):
        return self.torch.topk(block, k, dim=axis, largest=False, sorted=False).values.max(dim=axis).values

    def nonzero(self, mask):
        return self.torch.nonzero(mask, as_tuple=True)


def array_ops(device: str | None) -> NumpyOps | TorchOps:
    """numpy for ``None``, else torch on ``device``."""
    return NumpyOps() if device is None else TorchOps(device)
