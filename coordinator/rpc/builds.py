"""CI's side: submit, place, release, get, cancel and watch builds. Thin: validate, call the queue,
convert."""

from __future__ import annotations

import logging
import math

from stoker.coordinator.config import CoordinatorConfig
from stoker.coordinator.core.errors import InvalidArgument, PermissionDenied
from stoker.coordinator.placement.build_queue import BuildQueue
from stoker.coordinator.rpc import auth, validate
from stoker.coordinator.rpc.status import streaming, unary
from stoker.v1 import (
    build_pb2,
    build_pb2_grpc,
)

log = logging.getLogger(__name__)


_DEFAULT_PAGE, _MAX_PAGE = 50, 500
BUILD_ID_METADATA = "stoker-build-id"
"""The initial metadata key of SubmitBuild's response that names the build, sent before its first event."""


class BuildsServicer(build_pb2_grpc.BuildsServicer):
    def __init__(self, config: CoordinatorConfig, builds: BuildQueue) -> None:
        self._config = config
        self._builds = builds
        b = config.builds
        self._maxima = validate.LimitMaxima(
            b.max_cpus, b.max_memory_bytes, b.max_pids, b.max_output_bytes, b.max_disk_bytes
        )

    def _check_owner(self, build_id: str) -> None:
        """A ci caller may only see and cancel its own builds. The message names no other principal."""
        identity = auth.current.get()
        if identity.sees_everything:
            return
        if self._builds.get(build_id).owner != identity.name:
            raise PermissionDenied(f"build {build_id} was not submitted by {identity.name!r}")

    def _validate(self, spec, *, need_command: bool) -> None:
        validate.build_spec(
            spec,
            need_command=need_command,
            max_files_bytes=self._config.builds.max_files_bytes,
            max_timeout_s=self._config.builds.max_timeout_s,
            maxima=self._maxima,
        )

    @streaming
    async def SubmitBuild(self, request: build_pb2.SubmitBuildRequest, context):
        self._validate(request.spec, need_command=True)
        validate.request_id(request.request_id)
        identity = auth.current.get()
        spec = auth.bind_spec(request.spec, identity)
        validate.cache_scopes(spec.cache)
        build_id = self._builds.submit(spec, request.request_id, owner=identity.name)
        self._check_owner(build_id)
        # Before any event: a client that drops now can still reattach with WatchBuild, without a request_id.
        await context.send_initial_metadata(((BUILD_ID_METADATA, build_id),))
        async for event in self._builds.watch(build_id):
            yield event

    @streaming
    async def WatchBuild(self, request: build_pb2.WatchBuildRequest, context):
        if not request.build_id:
            raise InvalidArgument("build_id: must not be empty")
        self._check_owner(request.build_id)
        async for event in self._builds.watch(request.build_id, request.after_seq):
            yield event

    @unary
    async def GetBuild(self, request: build_pb2.GetBuildRequest, context) -> build_pb2.Build:
        if not request.build_id:
            raise InvalidArgument("build_id: must not be empty")
        self._check_owner(request.build_id)
        return self._builds.get(request.build_id)

    @unary
    async def CancelBuild(self, request: build_pb2.CancelBuildRequest, context) -> build_pb2.Build:
        if not request.build_id:
            raise InvalidArgument("build_id: must not be empty")
        self._check_owner(request.build_id)
        return self._builds.cancel(request.build_id, request.reason)

    @unary
    async def PlaceBuild(self, request: build_pb2.PlaceBuildRequest, context) -> build_pb2.Placement:
        self._validate(request.spec, need_command=False)
        limit = self._config.builds.max_timeout_s
        if not math.isfinite(request.lease_s) or not 0 <= request.lease_s <= limit:
            raise InvalidArgument(f"lease_s: must be between 0 and {limit:g} seconds, got {request.lease_s}")
        identity = auth.current.get()
        spec = auth.bind_spec(request.spec, identity)
        validate.cache_scopes(spec.cache)
        return await self._builds.place(spec, request.lease_s, owner=identity.name)

    @unary
    async def ListBuilds(self, request: build_pb2.ListBuildsRequest, context) -> build_pb2.ListBuildsResponse:
        identity = auth.current.get()
        owner = request.owner
        if not identity.sees_everything:
            if owner and owner != identity.name:
                raise PermissionDenied(f"owner: a ci token lists its own builds only ({identity.name!r})")
            owner = identity.name
        if not 0 <= request.page_size <= _MAX_PAGE:
            raise InvalidArgument(f"page_size: must be between 0 and {_MAX_PAGE}, got {request.page_size}")
        if request.state not in build_pb2.BuildState.values():
            raise InvalidArgument(f"state: {request.state} is not a build state")

        def wanted(build: build_pb2.Build) -> bool:
            return (
                (not request.workspace or build.spec.workspace == request.workspace)
                and (not request.state or build.state == request.state)
                and (not request.node or build.node == request.node)
                and (not owner or build.owner == owner)
            )

        since = request.since.ToSeconds() if request.HasField("since") else float("-inf")
        builds, token = self._builds.list_builds(
            wanted, since, request.page_size or _DEFAULT_PAGE, request.page_token, owner
        )
        return build_pb2.ListBuildsResponse(builds=builds, next_page_token=token)

    @unary
    async def ReleasePlacement(self, request: build_pb2.ReleasePlacementRequest, context):
        if not request.lease_id:
            raise InvalidArgument("lease_id: must not be empty")
        identity = auth.current.get()
        owner = self._builds.lease_owner(request.lease_id)
        if owner is not None and not identity.sees_everything and owner != identity.name:
            raise PermissionDenied(f"lease {request.lease_id} was not taken by {identity.name!r}")
        return build_pb2.ReleasePlacementResponse(released=self._builds.release(request.lease_id))
