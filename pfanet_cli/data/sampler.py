"""Identity-aligned batch sampler (SPEC §4): P identities, then K RGB and K IR images of each, in
the same identity order, so row i of the RGB batch and row i of the IR batch show the same person.

The sampler's whole state is (epoch, cursor): each epoch is a seeded permutation of the identities
and each batch's image draws use a generator keyed by (seed, epoch, cursor, rank), so a resumed run
draws exactly the batches an uninterrupted run would. Under DDP every rank walks the same
permutation and takes its own P identities of each step, so ranks never share an identity.
"""

from __future__ import annotations

import numpy as np

from pfanet_cli.errors import UsageError


class IdentityAlignedSampler:
    def __init__(self, labels: np.ndarray, is_ir: np.ndarray, ids_per_batch: int, images_per_id: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1, key: str = "joint") -> None:
        labels = np.asarray(labels)
        is_ir = np.asarray(is_ir, dtype=bool)
        rgb_pools, ir_pools = {}, {}
        for label in np.unique(labels):
            rgb = np.flatnonzero((labels == label) & ~is_ir)
            ir = np.flatnonzero((labels == label) & is_ir)
            if len(rgb) and len(ir):
                rgb_pools[int(label)], ir_pools[int(label)] = rgb, ir
        self.identities = np.array(sorted(rgb_pools), dtype=np.int64)
        needed = ids_per_batch * world_size
        if needed > len(self.identities):
            raise UsageError(
                f"{key}.ids_per_batch={ids_per_batch} x {world_size} process(es) needs {needed} identities "
                f"with both RGB and IR images, the data has {len(self.identities)}; lower {key}.ids_per_batch"
            )
        self.rgb_pools, self.ir_pools = rgb_pools, ir_pools
        self.ids_per_batch, self.images_per_id = ids_per_batch, images_per_id
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.cursor = 0, 0
        self._order_epoch, self._order = -1, self.identities

    @property
    def batch_size(self) -> int:
        """Images per modality in one batch (P·K)."""
        return self.ids_per_batch * self.images_per_id

    def _epoch_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            self._order = np.random.default_rng([self.seed, self.epoch]).permutation(self.identities)
            self._order_epoch = self.epoch
        return self._order

    def _pick(self, pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(pool, self.images_per_id, replace=len(pool) < self.images_per_id)

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """Row indices of the next batch: ``(rgb_rows, ir_rows)``, each of length P·K."""
        step = self.ids_per_batch * self.world_size
        if self.cursor + step > len(self.identities):
            self.epoch, self.cursor = self.epoch + 1, 0
        start = self.cursor + self.rank * self.ids_per_batch
        chosen = self._epoch_order()[start:start + self.ids_per_batch]
        rng = np.random.default_rng([self.seed, self.epoch, self.cursor, self.rank])
        rgb = np.concatenate([self._pick(self.rgb_pools[int(label)], rng) for label in chosen])
        ir = np.concatenate([self._pick(self.ir_pools[int(label)], rng) for label in chosen])
        self.cursor += step
        return rgb, ir

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor, self.seed = int(state["epoch"]), int(state["cursor"]), int(state["seed"])
