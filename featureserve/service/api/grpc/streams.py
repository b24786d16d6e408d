"""``StreamFrames``: one camera session per stream; each frame's features and matches to the previous frame
and to the last keyframe, answered in order, with both kept server-side for the life of the stream."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from ....arrays import to_array
from ....models import Features, intrinsics_matrix
from ....v1 import features_pb2 as pb
from ....v1 import service_pb2 as service
from ...contract import MatchOptions
from ...errors import FeatureServeError, InvalidInput, InvalidOption, Unavailable
from ...operations import Operations
from .convert import feature_set_message, geometry_message, image_input, parse_options

Backpressure = Literal["queue", "latest"]
Status = service.FrameStatus


@dataclass
class FrameJob:
    """A received frame waiting for its answer; ``error`` is set when the message itself was unusable."""

    sequence: int
    timestamp: float
    arrived: float
    image: bytes | np.ndarray | None = None
    intrinsics: np.ndarray | None = None
    keyframe: bool = False
    error: FeatureServeError | None = None
    dropped: bool = False

    def drop(self) -> None:
        """Mark as superseded and release the image at once, so skipped frames cost no memory."""
        self.dropped = True
        self.image = None


class FrameQueue:
    """A session's received frames in arrival order, under its back-pressure policy.

    ``queue``: `put` waits while ``capacity`` frames wait, so the stream stops being read and HTTP/2 flow
    control slows the client down. ``latest``: `put` never waits; every frame still waiting when a newer
    one arrives is dropped (it keeps its place, so the answers stay in order).
    """

    def __init__(self, policy: Backpressure, capacity: int) -> None:
        self.policy = policy
        self.capacity = capacity
        self.closed = False
        self.drained = False
        self._frames: deque[FrameJob] = deque()
        self._changed = asyncio.Event()

    async def _until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self._changed.clear()
            await self._changed.wait()

    async def put(self, job: FrameJob) -> None:
        """Add a frame (after waiting for room under ``queue``); ignored once closed."""
        if self.policy == "queue":
            await self._until(lambda: len(self._frames) < self.capacity or self.closed)
        if self.closed:
            return
        if self.policy == "latest":
            for waiting in self._frames:
                if waiting.error is None:
                    waiting.drop()
        self._frames.append(job)
        self._changed.set()

    async def get(self) -> FrameJob | None:
        """The oldest frame; ``None`` once closed and empty."""
        await self._until(lambda: bool(self._frames) or self.closed)
        job = self._frames.popleft() if self._frames else None
        self._changed.set()
        return job

    def close(self) -> None:
        """Accept no more frames; those already queued are still answered."""
        self.closed = True
        self._changed.set()

    def drain(self) -> None:
        """Close because the server is draining (the stream then ends with UNAVAILABLE)."""
        self.drained = True
        self.close()


@dataclass(frozen=True)
class TrackedFrame:
    """A processed frame the session keeps to match later frames against."""

    sequence: int
    features: Features
    intrinsics: np.ndarray | None


class FrameSession:
    """Options and state of one stream: the previous frame, the keyframe and the last intrinsics."""

    def __init__(self, ops: Operations, request: service.SessionOptions | None) -> None:
        self.ops = ops
        options = parse_options(MatchOptions, request and request.options, request and request.match_options)
        if options.intrinsics0 is not None or options.intrinsics1 is not None:
            raise InvalidOption("session match_options must not carry intrinsics; set Frame.intrinsics instead")
        self.options = options
        # Geometry is chosen per pair: unless set explicitly, essential when both frames have intrinsics,
        # fundamental otherwise.
        explicit = request is not None and request.match_options.HasField("geometry")
        self.geometry = options.geometry if explicit else None
        # A camera's frames go ahead of bulk work in the model's queue.
        plan = ops.plan_match(options.model_copy(update={"geometry": "none", "priority": "realtime"}))
        assert plan.extract is not None
        self.extract_plan = plan.extract
        self.model = plan.extract.model
        self.pair_options = plan.pair
        backpressure = request.backpressure if request is not None and request.HasField("backpressure") else "queue"
        if backpressure not in get_args(Backpressure):
            raise InvalidOption(f"backpressure: must be 'queue' or 'latest', got {backpressure!r}")
        self.backpressure: Backpressure = backpressure  # type: ignore[assignment]
        deadline_ms = ops.settings.default_deadline_ms
        if request is not None and request.HasField("frame_deadline_ms"):
            if not request.frame_deadline_ms > 0:
                raise InvalidOption(f"frame_deadline_ms: must be positive, got {request.frame_deadline_ms}")
            deadline_ms = request.frame_deadline_ms
        self.frame_deadline_s = deadline_ms / 1000.0
        self.previous: TrackedFrame | None = None
        self.keyframe: TrackedFrame | None = None
        self.intrinsics: np.ndarray | None = None

    def receive(self, frame: pb.Frame) -> FrameJob:
        """A `FrameJob` for a received frame; problems are recorded on the job, never raised."""
        job = FrameJob(frame.sequence, frame.timestamp, time.monotonic(), keyframe=frame.keyframe)
        try:
            job.image = image_input(frame.image, "frame.image", self.ops.settings)
            if frame.HasField("intrinsics"):
                k = frame.intrinsics
                try:
                    job.intrinsics = intrinsics_matrix([k.fx, k.fy, k.cx, k.cy])
                except ValueError as error:
                    raise InvalidInput(f"frame.intrinsics: {error}") from None
        except FeatureServeError as error:
            job.error = error
        return job

    async def answer(self, job: FrameJob) -> service.FrameResult:
        """Process one frame (or report it dropped or failed); only a processed frame changes the state."""
        result = service.FrameResult(sequence=job.sequence, timestamp=job.timestamp, model=self.model)
        try:
            if job.dropped:
                result.status = Status.FRAME_STATUS_DROPPED
            else:
                result.MergeFrom(await self._process(job))
                result.status = Status.FRAME_STATUS_OK
        except FeatureServeError as error:
            result.status = Status.FRAME_STATUS_FAILED
            result.error.CopyFrom(service.FrameError(status=error.grpc_code, code=error.code, message=error.message))
        result.latency_ms = (time.monotonic() - job.arrived) * 1000.0
        status = Status.Name(result.status).removeprefix("FRAME_STATUS_").lower()
        self.ops.metrics.stream_frames.labels(self.model, status).inc()
        return result

    async def _process(self, job: FrameJob) -> service.FrameResult:
        """Features and matches of a frame; the session's state changes only when all of it succeeded."""
        if job.error is not None:
            raise job.error
        assert job.image is not None
        intrinsics = job.intrinsics if job.intrinsics is not None else self.intrinsics
        deadline = job.arrived + self.frame_deadline_s
        features = await self.ops.extract(self.extract_plan, job.image, deadline)
        current = TrackedFrame(job.sequence, features, intrinsics)
        result = service.FrameResult(
            features=feature_set_message(features, self.options.include_descriptors, self.options.descriptor_dtype)
        )
        # The matches to the previous frame and to the keyframe run side by side on the CPU threads.
        earlier = {"to_previous": self.previous}
        if self.keyframe is not self.previous:
            earlier["to_keyframe"] = self.keyframe
        wanted = {field: frame for field, frame in earlier.items() if frame is not None}
        answers = await asyncio.gather(*(self._match(current, frame) for frame in wanted.values()))
        for field, answer in zip(wanted, answers, strict=True):
            getattr(result, field).CopyFrom(answer)
        if self.keyframe is not None and self.keyframe is self.previous:
            result.to_keyframe.CopyFrom(result.to_previous)
        self.previous = current
        self.intrinsics = intrinsics
        if job.keyframe or self.keyframe is None:
            self.keyframe = current
            result.keyframe = True
        return result

    async def _match(self, current: TrackedFrame, earlier: TrackedFrame) -> service.FrameMatches:
        both = current.intrinsics is not None and earlier.intrinsics is not None
        geometry = self.geometry or ("essential" if both else "fundamental")
        if geometry == "essential" and not both:
            raise InvalidInput("geometry essential needs intrinsics: set Frame.intrinsics (later frames reuse it)")
        options = dataclasses.replace(
            self.pair_options,
            geometry=None if geometry == "none" else geometry,
            intrinsics0=current.intrinsics,
            intrinsics1=earlier.intrinsics,
        )
        pair = await self.ops.match_features(self.model, current.features, earlier.features, options)
        message = service.FrameMatches(
            sequence=earlier.sequence, num_matches=len(pair.matches), matches=to_array(pair.matches.indices, "int32")
        )
        if pair.geometry is not None:
            message.inliers.CopyFrom(to_array(pair.geometry.inliers, "uint8"))
            message.num_inliers = pair.geometry.num_inliers
            message.geometry.CopyFrom(geometry_message(pair.geometry))
        return message


async def read_message(context: grpc.aio.ServicerContext) -> Any:
    """The next ``StreamFramesRequest`` (or ``grpc.aio.EOF``); raises `InvalidInput` for bytes that are not one."""
    try:
        return await context.read()
    except DecodeError as error:
        raise InvalidInput(f"a stream message is not a valid StreamFramesRequest: {error}") from None


async def read_frames(context: grpc.aio.ServicerContext, session: FrameSession, queue: FrameQueue) -> None:
    """Move frames from the stream into ``queue`` until the client half-closes or the queue closes."""
    try:
        while not queue.closed:
            try:
                request = await read_message(context)
            except InvalidInput as error:
                # One bad message fails as a frame (its sequence is unknown); the messages after it still count.
                await queue.put(FrameJob(0, 0.0, time.monotonic(), error=error))
                continue
            if request is grpc.aio.EOF:
                break
            if request.WhichOneof("message") == "frame":
                await queue.put(session.receive(request.frame))
            else:
                error = InvalidInput("session options may only be sent as the first message of a stream")
                await queue.put(FrameJob(0, 0.0, time.monotonic(), error=error))
    finally:
        queue.close()


async def run_session(ops: Operations, context: grpc.aio.ServicerContext, sessions: set[FrameQueue]) -> None:
    """Serve one StreamFrames call: answer every frame in order; raise `Unavailable` when cut by a drain."""
    first = await read_message(context)
    if first is grpc.aio.EOF:
        return
    session = FrameSession(ops, first.session if first.WhichOneof("message") == "session" else None)
    queue = FrameQueue(session.backpressure, ops.settings.stream_queue_size)
    metrics = ops.metrics
    if first.WhichOneof("message") == "frame":
        await queue.put(session.receive(first.frame))
    sessions.add(queue)
    metrics.stream_sessions.inc()
    reader = asyncio.create_task(read_frames(context, session, queue))
    try:
        while (job := await queue.get()) is not None:
            await context.write(await session.answer(job))
    finally:
        reader.cancel()
        sessions.discard(queue)
        metrics.stream_sessions.dec()
    if queue.drained:
        raise Unavailable("the server is draining; reconnect to continue the session")
