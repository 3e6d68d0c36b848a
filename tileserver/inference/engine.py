"""ONNX Runtime sessions for the stages of a model bundle. ``Engine`` owns one
session per stage on one device (CUDA if asked and it really loads, else CPU),
runs them through a bounded ``WorkQueue`` and times every call."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tileserver.inference.bundle import Bundle, BundleError
from tileserver.inference.queue import WorkQueue
from tileserver.settings import DEVICES

log = logging.getLogger(__name__)


def session_options(threads: int | None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = int(threads or 0)  # 0: ORT picks (one per physical core)
    so.inter_op_num_threads = 1
    # spinning threads would burn the cores that other requests and the tile encoder need
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


def _cuda_sessions(files: Sequence[Path], threads: int | None) -> list | None:
    """Sessions on CUDA, or None when the CUDA provider does not really load."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return None
    cuda = ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC", "do_copy_in_default_stream": "1"})
    old = ort.get_default_logger_severity() if hasattr(ort, "get_default_logger_severity") else 2
    ort.set_default_logger_severity(4)  # the provider's load failure is reported below, once
    try:
        sessions = [_session(f, threads, [cuda, "CPUExecutionProvider"]) for f in files]
    finally:
        ort.set_default_logger_severity(old)
    if any(s.get_providers()[0] != "CUDAExecutionProvider" for s in sessions):
        return None
    return sessions


def create_sessions(bundle: Bundle, device: str = "auto", threads: int | None = None) -> tuple[list, str, str | None]:
    """(sessions, provider in use, fallback note or None) for ``device`` in auto|cpu|cuda."""
    import onnxruntime as ort

    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, not {device!r}")
    files = bundle.stage_files
    note = None
    if device in ("auto", "cuda"):
        sessions = _cuda_sessions(files, threads)
        if sessions is not None:
            return sessions, "CUDAExecutionProvider", None
        if device == "cuda":
            raise BundleError("--device cuda: the CUDA execution provider did not load (see ONNX Runtime's GPU requirements)")
        note = "CUDA not usable here; running on CPU"
        log.warning("device auto: %s", note)
    sessions = [_session(f, threads, ["CPUExecutionProvider"]) for f in files]
    return sessions, sessions[0].get_providers()[0], note


def _session(file: Path, threads: int | None, providers: list):
    """An ONNX Runtime session; a graph it cannot load is a ``BundleError`` naming the file."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(file), session_options(threads), providers=providers)
    except Exception as e:  # ORT raises its own classes (InvalidProtobuf, Fail, ...) for a bad graph
        raise BundleError(f"{file}: ONNX Runtime cannot load it ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else type(e).__name__


MIN_OPSET = 11


def check_stages(files: Sequence[Path], sessions: Sequence, side: int) -> None:
    """Each stage is a x2 RGB graph: one input (N, 3, H, W), one output, default-domain opset
    >= MIN_OPSET, and a run on a side x side block gives (1, 3, 2 side, 2 side) finite values;
    else a ``BundleError`` naming the file and the problem."""
    import onnx

    for f, sess in zip(files, sessions):
        ins, outs = sess.get_inputs(), sess.get_outputs()
        if len(ins) != 1 or len(outs) != 1:
            raise BundleError(f"{f}: needs one input and one output, has {len(ins)} and {len(outs)}")
        for what, arg in (("input", ins[0]), ("output", outs[0])):
            shape = arg.shape
            if len(shape) != 4 or shape[1] != 3:
                raise BundleError(f"{f}: {what} {arg.name!r} must be (N, 3, H, W), is {shape}")
        opsets = {o.domain or "ai.onnx": o.version for o in onnx.load(str(f), load_external_data=False).opset_import}
        if opsets.get("ai.onnx", 0) < MIN_OPSET:
            raise BundleError(f"{f}: opset {opsets.get('ai.onnx')} is older than {MIN_OPSET}; export it again")
        try:
            y = sess.run(None, {ins[0].name: np.full((1, 3, side, side), 0.5, np.float32)})[0]
        except Exception as e:  # the graph loads but cannot run: the bundle's fault, told in one line
            raise BundleError(f"{f}: a test run on a {side}x{side} block failed ({_first_line(e)})") from None
        if y.shape != (1, 3, 2 * side, 2 * side):
            raise BundleError(f"{f}: a {side}x{side} block gave {tuple(y.shape)}, not (1, 3, {2 * side}, {2 * side}) (x2)")
        if not np.isfinite(y).all():
            raise BundleError(f"{f}: a test run gave NaN or infinite values")


def to_float(img: np.ndarray) -> np.ndarray:
    """(N,H,W,3) or (H,W,3) uint8 → (N,3,H,W) float32 in [0, 1]."""
    if img.ndim == 3:
        img = img[None]
    return np.ascontiguousarray(img.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255)


def to_uint8(y: np.ndarray) -> np.ndarray:
    """(N,3,H,W) float → (N,H,W,3) uint8: clip to [0, 1], ×255, round half to even (as torch)."""
    return np.rint(np.clip(y, 0.0, 1.0) * np.float32(255)).astype(np.uint8).transpose(0, 2, 3, 1)


StageTimer = Callable[[str, int, float], None]  # (model id, stage from 0, seconds)


def _run_engine_batch(key: tuple, xs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The device queue's batch runner: a key is (engine, stage, block shape), so models share a queue."""
    return key[0]._run_batch(key[1], xs)


class Engine:
    """One session per stage on one device; ``run(stage, blocks)`` goes through the device queue, which
    several engines (the models of one server) share: one model run at a time on the device, and
    interactive work of any model goes before prefetch of every model."""

    def __init__(
        self,
        bundle: Bundle,
        device: str = "auto",
        threads: int | None = None,
        queue_size: int = 32,
        on_run: StageTimer | None = None,
        max_batch: int | None = None,
        queue: WorkQueue | None = None,
    ):
        self.bundle = bundle
        self.device = device
        self.threads = threads
        self.sessions, self.provider, self.note = create_sessions(bundle, device, threads)
        check_stages(bundle.stage_files, self.sessions, 2 * max(bundle.stage_halo(k) for k in range(bundle.stages)) + 16)
        self.input_names = [s.get_inputs()[0].name for s in self.sessions]
        gpu = self.provider.startswith("CUDA")
        # batching pays on a GPU; on a CPU one block already keeps every core busy
        self.max_batch = max_batch or (8 if gpu else 1)
        self._owns_queue = queue is None  # the engine that made the queue closes it
        self.queue = queue or WorkQueue(f"infer-{'cuda' if gpu else 'cpu'}", _run_engine_batch, queue_size, self.max_batch)
        self.on_run = on_run
        self._lock = threading.Lock()
        self.runs = [0] * len(self.sessions)  # forward passes per stage (blocks, not batches)
        log.info("model %s on %s%s", bundle.model_id, self.provider, f" ({self.note})" if self.note else "")

    @property
    def stages(self) -> int:
        return len(self.sessions)

    def run_float(self, stage: int, x: np.ndarray) -> np.ndarray:
        """Directly (no queue): (N,3,H,W) float32 → (N,3,2H,2W) float32, unclipped."""
        t0 = time.perf_counter()
        y = self.sessions[stage].run(None, {self.input_names[stage]: x})[0]
        dt = time.perf_counter() - t0
        with self._lock:
            self.runs[stage] += x.shape[0]
        if self.on_run:
            self.on_run(self.bundle.model_id, stage, dt)
        return y

    def run(self, stage: int, blocks: np.ndarray) -> np.ndarray:
        """Through the device queue: (N,H,W,3) uint8 → (N,2H,2W,3) uint8 (raises QueueFull).
        Blocks of one stage and shape waiting together run as one batch."""
        x = to_float(blocks)
        return self.queue.run((self, stage, x.shape[1:]), x)

    def _run_batch(self, stage: int, xs: Sequence[np.ndarray]) -> list[np.ndarray]:
        y = to_uint8(self.run_float(stage, xs[0] if len(xs) == 1 else np.concatenate(xs)))
        bounds = np.cumsum([0] + [len(x) for x in xs])
        return [y[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def warm_up(self, shapes: list[tuple[int, int]]) -> None:
        """One pass per stage at its fixed block shape (CUDA picks its kernels here)."""
        for k, shape in enumerate(shapes):
            self.sessions[k].run(None, {self.input_names[k]: np.zeros((1, 3, *shape), np.float32)})

    def close(self) -> None:
        if self._owns_queue:
            self.queue.close()

