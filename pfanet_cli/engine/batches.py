"""Training batches: identity-aligned P x K batches of RGB and IR images from a prepared split,
prepared ahead of the training step and augmented where the networks run; and CycleGAN's pool of
earlier fakes.

A :class:`BatchSource` keeps ``prefetch`` batches ready on a background thread while the current
step computes. Each batch's rows (sampler) and flips and crops (a CPU generator) are drawn in order
on that thread; on a GPU only the uint8 rows are gathered on the host, into page-locked memory, and
the copy, crop, flip and conversion to [-1, 1] run on a side CUDA stream that the training stream
waits for; on the CPU the thread does all of it. The source remembers the sampler and generator
state after the last batch it *handed out*, so a checkpoint resumes exactly there: batches that were
prepared but not used are drawn again after a resume, as in an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from pfanet_cli.data.augment import (
    NONE,
    Augmentation,
    CropPlan,
    augment_on_device,
    augment_on_host,
    defer_crop,
    draw_augment_plan,
    gather_rows,
)
from pfanet_cli.data.prepared import PreparedSplit
from pfanet_cli.data.sampler import IdentityAlignedSampler


@dataclass
class Batch:
    rgb: torch.Tensor
    ir: torch.Tensor
    labels: torch.Tensor
    rgb_second: torch.Tensor | None = None
    """With ``data.rgb_views: 2``: a second, independently augmented view of every RGB image (CAJ's)."""
    rgb_plan: CropPlan | None = None
    """With a source that defers the RGB images' augmentation: ``rgb`` as prepared (not shifted, not flipped) and
    the pad + crop + flip drawn for them, to apply to their translations (:func:`crop_and_flip_unit_range`)."""

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.rgb, self.ir, self.labels, self.rgb_second) if t is not None]


@dataclass
class _Prepared:
    """A batch made ahead of use, the source's position after it, and (CUDA) the event its device
    work records."""

    batch: Batch
    position: dict[str, Any]
    ready: Any = None


class _CudaSideStream:
    """Runs the producer's device work on its own CUDA stream; the consumer's stream waits for it.

    ``backend`` is ``torch.cuda`` (a stand-in in the CPU tests, which check the calls)."""

    def __init__(self, device: torch.device, backend: Any = torch.cuda) -> None:
        self.device, self.backend = device, backend
        self.stream = backend.Stream(device=device)

    def work(self) -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        stack.enter_context(self.backend.device(self.device))
        stack.enter_context(self.backend.stream(self.stream))
        return stack

    def record(self) -> Any:
        event = self.backend.Event()
        event.record(self.stream)
        return event

    def hand_over(self, prepared: _Prepared) -> None:
        """Make the consumer's current stream wait for the batch, and tell the caching allocator that
        the batch's memory (allocated on the side stream) is used there."""
        current = self.backend.current_stream(self.device)
        current.wait_event(prepared.ready)
        for tensor in prepared.batch.tensors():
            tensor.record_stream(current)


class _BatchMaker:
    """Makes one batch at a time: rows from the sampler, an augmentation plan from the generator, then the
    images on the device. Owns the sampler and generator while a prefetch thread runs."""

    def __init__(self, split: PreparedSplit, sampler: IdentityAlignedSampler, generator: torch.Generator,
                 device: torch.device, flip: bool, pad: int, channels_last: bool,
                 augmentation: Augmentation = NONE, defer_rgb: bool = False) -> None:
        self.split, self.sampler, self.generator = split, sampler, generator
        self.device, self.flip, self.pad = device, flip, pad
        self.channels_last, self.augmentation, self.defer_rgb = channels_last, augmentation, defer_rgb
        self.side_stream = _CudaSideStream(device) if device.type == "cuda" else None

    def position(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict(), "augment_rng": self.generator.get_state()}

    def seek(self, position: dict[str, Any]) -> None:
        self.sampler.load_state_dict(position["sampler"])
        self.generator.set_state(position["augment_rng"])

    def make(self) -> _Prepared:
        rgb_rows, ir_rows = self.sampler.next_batch()
        rows = np.concatenate([rgb_rows, ir_rows] + [rgb_rows] * (self.augmentation.rgb_views - 1))
        plan = draw_augment_plan(len(rgb_rows), len(ir_rows), self.split.image_size, self.generator, self.flip,
                                 self.pad, self.augmentation)
        rgb_plan = None
        if self.defer_rgb:
            crop, rgb_plan = defer_crop(plan.crop, len(rgb_rows), self.pad)
            plan = plan._replace(crop=crop)
        position = self.position()
        labels = torch.from_numpy(self.split.labels[rgb_rows])
        if self.side_stream is None:
            images = torch.from_numpy(augment_on_host(self.split.images, rows, plan, self.pad))
            return _Prepared(self._batch(images, labels, len(rgb_rows), rgb_plan), position)
        host = gather_rows(self.split.images, rows, pin_memory=self.device.type == "cuda")
        with self.side_stream.work():
            images = host.to(self.device, non_blocking=True)
            images = augment_on_device(images, plan._replace(crop=plan.crop.to(self.device)), self.pad)
            batch = self._batch(images, labels.to(self.device, non_blocking=True), len(rgb_rows), rgb_plan)
            return _Prepared(batch, position, self.side_stream.record())

    def _batch(self, images: torch.Tensor, labels: torch.Tensor, rgb_count: int,
               rgb_plan: CropPlan | None = None) -> Batch:
        """B×H×W×3 -> B×3×H×W, which is already channels-last in memory; made contiguous otherwise. Rows: RGB, IR
        (as many), then the second RGB views when there are two."""
        images = images.permute(0, 3, 1, 2)
        if not self.channels_last:
            images = images.contiguous()
        rgb, ir, *second = images.split(rgb_count)
        return Batch(rgb, ir, labels, second[0] if second else None, rgb_plan)

    def hand_over(self, prepared: _Prepared) -> None:
        if self.side_stream is not None:
            self.side_stream.hand_over(prepared)


class _Prefetcher:
    """Calls ``produce`` on a daemon thread and keeps up to ``depth`` results queued, in order. An
    exception raised by ``produce`` is handed to the consumer by :meth:`get`. Restartable."""

    def __init__(self, produce: Callable[[], Any], depth: int, name: str) -> None:
        self.produce, self.depth, self.name = produce, depth, name
        self.thread: threading.Thread | None = None
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stopping = threading.Event()

    @property
    def running(self) -> bool:
        return self.thread is not None

    def start(self) -> None:
        self.stopping.clear()
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                item = (self.produce(), None)
            except BaseException as error:  # noqa: BLE001 - re-raised on the consumer's thread
                item = (None, error)
            if not self._put(item) or item[1] is not None:
                return

    def _put(self, item: tuple[Any, BaseException | None]) -> bool:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def get(self) -> Any:
        result, error = self.queue.get()
        if error is not None:
            self.stop()
            raise error
        return result

    def stop(self) -> None:
        """Stop the thread (it finishes the batch it is making) and drop what it had prepared."""
        if self.thread is None:
            return
        self.stopping.set()
        if self.thread is threading.current_thread():
            return  # a garbage collection on the thread itself finalised the source: it ends by itself
        self.thread.join()
        self.thread = None
        self.queue = queue.Queue(maxsize=self.depth)


class BatchSource:
    """Identity-aligned batches from a prepared split, augmented (flip, pad + crop, and ``augmentation``) and
    on ``device``: float [-1, 1], channels-last when asked (``defer_rgb``: the RGB images come without their pad +
    crop + flip, whose draws are in ``Batch.rgb_plan``, the same draws as otherwise). ``prefetch`` batches are
    prepared ahead on a background thread (0: each batch is made in :meth:`next`); :meth:`close` stops that
    thread (the trainer closes its sources).
    ``wait_seconds`` is the time :meth:`next` has spent waiting for batches."""

    def __init__(self, split: PreparedSplit, sampler: IdentityAlignedSampler, device: torch.device,
                 flip: bool, pad: int, seed: int, channels_last: bool, prefetch: int = 0,
                 augmentation: Augmentation = NONE, defer_rgb: bool = False) -> None:
        self.sampler, self.device = sampler, device
        self.generator = torch.Generator().manual_seed(seed)
        self._maker = _BatchMaker(split, sampler, self.generator, device, flip, pad, channels_last, augmentation,
                                  defer_rgb)
        self._prefetcher = _Prefetcher(self._maker.make, max(prefetch, 1), name="pfanet-batches")
        weakref.finalize(self, self._prefetcher.stop)  # the thread holds no reference to the source
        self.prefetch = prefetch
        self._position = self._maker.position()
        self.wait_seconds = 0.0

    def next(self) -> Batch:
        started = time.perf_counter()
        if self.prefetch == 0:
            prepared = self._maker.make()
        else:
            if not self._prefetcher.running:
                self._prefetcher.start()
            prepared = self._prefetcher.get()
        self.wait_seconds += time.perf_counter() - started
        self._maker.hand_over(prepared)
        self._position = prepared.position
        return prepared.batch

    def close(self) -> None:
        """Stop the prefetch thread and rewind to the last batch handed out (a later :meth:`next`
        starts again from there)."""
        self._prefetcher.stop()
        self._maker.seek(self._position)

    def state_dict(self) -> dict[str, Any]:
        """The position after the last batch handed out (not after the prefetched ones)."""
        return {"sampler": dict(self._position["sampler"]), "augment_rng": self._position["augment_rng"].clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._prefetcher.stop()
        self._position = {"sampler": dict(state["sampler"]), "augment_rng": state["augment_rng"].clone()}
        self._maker.seek(self._position)


class ImagePool:
    """CycleGAN's history of generated images: D sees a mix of current and earlier fakes.

    Uses the global torch RNG (saved in checkpoints), and its contents are part of the state."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand(1).item() < 0.5:
                index = int(torch.randint(0, self.size, (1,)).item())
                out.append(self.images[index].clone())
                self.images[index] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)

    def state_dict(self) -> dict[str, Any]:
        stacked = torch.stack(self.images).cpu() if self.images else torch.empty(0)
        return {"size": self.size, "images": stacked}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.images = [image.to(device) for image in state["images"]] if state["images"].numel() else []
