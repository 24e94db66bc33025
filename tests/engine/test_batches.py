"""The input pipeline: prefetched batches equal batches made on the training thread, resume exactly
from what was handed out (not from what was prepared), several sources work side by side, threads
stop, errors reach the training thread, and the CUDA path's stream hand-over runs on the CPU with a
stand-in for ``torch.cuda``."""

from __future__ import annotations

import contextlib
import functools
import threading
import time

import numpy as np
import pytest
import torch

from pfanet_cli.data.augment import NONE, Augmentation
from pfanet_cli.data.prepared import PreparedSplit
from pfanet_cli.data.sampler import IdentityAlignedSampler
from pfanet_cli.engine.batches import BatchSource, _CudaSideStream
from pfanet_cli.errors import DataError


def toy_split(ids: int = 6, per_modality: int = 5, size: tuple[int, int] = (16, 8), seed: int = 0) -> PreparedSplit:
    rng = np.random.default_rng(seed)
    count = ids * 2 * per_modality
    labels = np.repeat(np.arange(ids), 2 * per_modality)
    is_ir = np.tile(np.repeat([False, True], per_modality), ids)
    images = rng.integers(0, 256, (count,) + size + (3,), dtype=np.uint8)
    empty = np.zeros(count, dtype=np.int64)
    return PreparedSplit("train", images, np.array([f"{i}.jpg" for i in range(count)]), labels, empty, is_ir,
                         labels)


def source(split: PreparedSplit, prefetch: int, ids: int = 2, per_id: int = 2, pad: int = 2, seed: int = 0,
           channels_last: bool = True, augmentation: Augmentation = NONE) -> BatchSource:
    sampler = IdentityAlignedSampler(split.labels, split.is_ir, ids, per_id, seed)
    return BatchSource(split, sampler, torch.device("cpu"), flip=True, pad=pad, seed=seed,
                       channels_last=channels_last, prefetch=prefetch, augmentation=augmentation)


def take(batches: BatchSource, count: int) -> list[tuple[torch.Tensor, ...]]:
    return [tuple(t.clone() for t in batches.next().tensors()) for _ in range(count)]


def assert_same(expected, got) -> None:
    assert len(expected) == len(got)
    for a, b in zip(expected, got):
        for x, y in zip(a, b):
            assert torch.equal(x, y)


def pipeline_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "pfanet-batches"]


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels-last", "contiguous"])
def test_prefetched_batches_equal_batches_made_on_the_training_thread(channels_last):
    split = toy_split()
    expected = take(source(split, prefetch=0, channels_last=channels_last), 7)
    prefetching = source(split, prefetch=3, channels_last=channels_last)
    got = take(prefetching, 7)
    prefetching.close()
    assert_same(expected, got)
    rgb, ir, labels = got[0]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    assert rgb.dtype == torch.float32 and rgb.shape == (4, 3, 16, 8) and ir.shape == rgb.shape
    assert prefetching.next().rgb.is_contiguous(memory_format=memory_format)
    assert rgb.min() >= -1 and rgb.max() <= 1 and (rgb == -1).any()  # padding
    first, _, second, _ = labels.tolist()
    assert labels.tolist() == [first, first, second, second] and first != second  # P=2 ids x K=2


def test_resume_continues_after_the_last_batch_handed_out_not_the_last_prepared():
    split = toy_split()
    synchronous = source(split, prefetch=0)
    straight = take(synchronous, 4)
    after_four = synchronous.state_dict()
    straight += take(synchronous, 5)
    first = source(split, prefetch=4)
    head = take(first, 4)
    deadline = time.monotonic() + 60
    while first._prefetcher.queue.qsize() < 4 and time.monotonic() < deadline:
        time.sleep(0.01)  # let the thread get 4 batches ahead of the training loop
    assert first._prefetcher.queue.qsize() == 4
    state = first.state_dict()
    assert first.sampler.state_dict() != state["sampler"]  # the sampler itself is ahead; the state is not
    assert state["sampler"] == after_four["sampler"]
    assert torch.equal(state["augment_rng"], after_four["augment_rng"])
    first.close()
    resumed = source(split, prefetch=4)
    resumed.load_state_dict(state)
    assert_same(straight, head + take(resumed, 5))
    resumed.close()


def test_two_sources_of_one_trainer_prefetch_and_resume_independently():
    """Issue #12's G/D steps draw their own batches (no padding, their own P x K) beside F's."""
    split = toy_split()

    def pair():
        return source(split, prefetch=2, ids=2, per_id=2, pad=2, seed=0), source(split, 2, 3, 1, pad=0, seed=1)

    reference_f, reference_gd = pair()
    expected_f, expected_gd = take(reference_f, 5), take(reference_gd, 8)
    f_batches, gd_batches = pair()
    got_f, got_gd = take(f_batches, 2), take(gd_batches, 3)
    got_f += take(f_batches, 1)
    states = f_batches.state_dict(), gd_batches.state_dict()
    for batches in (reference_f, reference_gd, f_batches, gd_batches):
        batches.close()
    f_resumed, gd_resumed = pair()
    f_resumed.load_state_dict(states[0])
    gd_resumed.load_state_dict(states[1])
    assert_same(expected_f, got_f + take(f_resumed, 2))
    assert_same(expected_gd, got_gd + take(gd_resumed, 5))
    assert got_gd[0][0].shape == (3, 3, 16, 8) and not (got_gd[0][0] == -1).all(dim=(1, 2, 3)).any()
    f_resumed.close()
    gd_resumed.close()


def test_close_stops_the_thread_and_loses_no_batch():
    split = toy_split()
    expected = take(source(split, prefetch=0), 6)
    batches = source(split, prefetch=3)
    before = len(pipeline_threads())
    got = take(batches, 2)
    assert len(pipeline_threads()) == before + 1
    batches.close()
    assert len(pipeline_threads()) == before
    got += take(batches, 4)  # starts a new thread where the last batch handed out left off
    batches.close()
    assert_same(expected, got)
    assert len(pipeline_threads()) == before


def test_an_error_on_the_prefetch_thread_reaches_the_training_thread():
    class Unreadable(np.ndarray):
        def __getitem__(self, item):
            raise DataError("train_images.npy: read failed")

    split = toy_split()
    split.images = split.images.view(Unreadable)
    batches = source(split, prefetch=2)
    with pytest.raises(DataError, match="read failed"):
        batches.next()
    assert not batches._prefetcher.running


def test_a_source_dropped_without_close_stops_its_thread():
    batches = source(toy_split(), prefetch=2)
    batches.next()
    thread = batches._prefetcher.thread
    del batches
    thread.join(timeout=10)
    assert not thread.is_alive()


class FakeCuda:
    """Records what the CUDA path asks of ``torch.cuda``."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    @contextlib.contextmanager
    def _entered(self, *call):
        self.calls.append(("enter",) + call)
        yield
        self.calls.append(("exit",) + call)

    def Stream(self, device):  # noqa: N802 - torch.cuda's name
        self.calls.append(("Stream", device))
        return FakeStream("side", self.calls)

    def device(self, device):
        return self._entered("device", device)

    def stream(self, stream):
        return self._entered("stream", stream.name)

    def Event(self):  # noqa: N802 - torch.cuda's name
        return FakeEvent(self.calls)

    def current_stream(self, device):
        return FakeStream("current", self.calls)


class FakeStream:
    def __init__(self, name: str, calls: list) -> None:
        self.name, self.calls = name, calls

    def wait_event(self, event) -> None:
        self.calls.append(("wait_event", self.name, event.recorded_on))


class FakeEvent:
    def __init__(self, calls: list) -> None:
        self.calls, self.recorded_on = calls, None

    def record(self, stream) -> None:
        self.recorded_on = stream.name
        self.calls.append(("record", stream.name))


def test_the_cuda_path_runs_on_the_cpu_with_a_stand_in_for_torch_cuda(monkeypatch):
    """The device-side path (uint8 rows gathered on the host, copied, then cropped, flipped and scaled on
    the device inside the side stream, the training stream waiting for its event) gives the same batches
    as the CPU path; the stand-in checks the stream calls."""
    split = toy_split()
    expected = take(source(split, prefetch=0), 3)
    fake = FakeCuda()
    recorded: list[tuple] = []
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda tensor, stream: recorded.append(stream.name),
                        raising=False)
    batches = source(split, prefetch=2)
    batches._maker.side_stream = _CudaSideStream(torch.device("cpu"), backend=fake)
    got = take(batches, 3)
    batches.close()
    assert_same(expected, got)
    assert fake.calls[0] == ("Stream", torch.device("cpu"))
    assert fake.calls[1:6] == [("enter", "device", torch.device("cpu")), ("enter", "stream", "side"),
                               ("record", "side"), ("exit", "stream", "side"), ("exit", "device", torch.device("cpu"))]
    waits = [call for call in fake.calls if call[0] == "wait_event"]
    assert waits == [("wait_event", "current", "side")] * 3
    assert recorded == ["current"] * 9  # rgb, ir and labels of each batch


EVERY_AUGMENTATION = Augmentation(erasing=0.5, grayscale=0.5, channel_exchange=0.5, ir_adaptive_gray=True,
                                  rgb_views=2)


def test_augmented_batches_prefetch_resume_and_take_the_device_path_exactly(monkeypatch):
    """With every augmentation on (their draws come from the source's generator, after the crop plan): a
    prefetching source gives the batches of a synchronous one, a source resumed from a state taken while it
    was 3 batches ahead continues exactly, and the device path gives the same batches."""
    split = toy_split()
    make = functools.partial(source, split, augmentation=EVERY_AUGMENTATION)
    expected = take(make(prefetch=0), 6)
    assert [t.shape[0] for t in expected[0]] == [4, 4, 4, 4]  # rgb, ir, labels, second rgb views
    assert not torch.equal(expected[0][0], take(source(split, prefetch=0), 1)[0][0])  # augmented
    first = make(prefetch=3)
    head = take(first, 2)
    state = first.state_dict()
    first.close()
    resumed = make(prefetch=3)
    resumed.load_state_dict(state)
    assert_same(expected, head + take(resumed, 4))
    resumed.close()
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda tensor, stream: None, raising=False)
    on_device = make(prefetch=2)
    on_device._maker.side_stream = _CudaSideStream(torch.device("cpu"), backend=FakeCuda())
    assert_same(expected, take(on_device, 6))
    on_device.close()
