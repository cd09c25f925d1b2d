"""Per-call request ids, authentication, and the boundary where errors become statuses.

Every nas.v1 call gets a request id and is authenticated before its
handler runs. Health and reflection pass through untouched, so probes
and grpcurl's listing work without credentials. Handlers raise domain
errors, which this interceptor turns into a gRPC status with rich
details (`service.api.status`). Anything unexpected becomes INTERNAL
`InternalError`, logged with its traceback but never shown to the caller.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_status import rpc_status

from service import metrics
from service.api.auth import Authenticator
from service.api.status import status_code_for, to_rpc_status
from service.domain.identity import DEFAULT_CALLER, Caller
from service.domain.ids import is_file_system_id, is_snapshot_id, new_request_id
from service.errors import InternalError, MalformedRequest, NasError
from service.logs import bind_ids

__all__ = ["RequestInterceptor", "current_caller", "current_request_id"]

logger = logging.getLogger(__name__)

_API_PREFIX = "/nas.v1."
_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("nas_request_id", default="")
_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("nas_caller", default=DEFAULT_CALLER)


def current_request_id() -> str:
    """Return the id of the call being handled in this task."""
    return _request_id.get()


def current_caller() -> Caller:
    """Return who makes the call being handled in this task."""
    return _caller.get()


class RequestInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(_API_PREFIX) or handler.unary_unary is None:
            return handler

        inner = handler.unary_unary
        method_name = method.rsplit("/", 1)[-1]

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            request_id = new_request_id()
            token = _request_id.set(request_id)
            caller_token = None
            started = time.monotonic()
            try:
                with bind_ids(request_id=request_id, **_well_formed_ids(request)):
                    try:
                        caller = await self._authenticator.authenticate(method, context)
                        caller_token = _caller.set(caller)
                        if isinstance(request, _UnparsableRequest):
                            raise MalformedRequest(request.reason)
                        response = await inner(request, context)
                    except NasError as error:
                        logger.info("%s failed: %s", method_name, error.code)
                        _observe(method_name, status_code_for(error), started)
                        await _abort(context, error, request_id)
                    except grpc.aio.AbortError:
                        raise
                    except Exception:
                        logger.exception("%s failed with an unexpected error", method_name)
                        _observe(method_name, grpc.StatusCode.INTERNAL, started)
                        await _abort(context, InternalError(), request_id)
                    _observe(method_name, grpc.StatusCode.OK, started)
                    logger.debug("%s succeeded in %.1f ms", method_name, (time.monotonic() - started) * 1000)
                    return response
            finally:
                _request_id.reset(token)
                if caller_token is not None:
                    _caller.reset(caller_token)

        return grpc.unary_unary_rpc_method_handler(
            handle,
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )


class _UnparsableRequest:
    """Stands in for a request whose bytes did not parse."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """Wrap a request parser so that bad bytes reach the handler as an _UnparsableRequest.

    grpc.aio handles a parser exception itself, with UNKNOWN and the
    parser's text, before any interceptor code runs. Returning a marker
    instead gives the call INVALID_ARGUMENT with a NAS code and a request
    id, like any other.
    """
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            return _UnparsableRequest(str(exc) or "the bytes are not a valid message")

    return parse


def _well_formed_ids(request: Any) -> dict[str, str]:
    """Return the request's file system and snapshot ids that are safe to log."""
    found = {}
    file_system_id = getattr(request, "file_system_id", "")
    if isinstance(file_system_id, str) and is_file_system_id(file_system_id):
        found["file_system_id"] = file_system_id
    snapshot_id = getattr(request, "snapshot_id", "")
    if isinstance(snapshot_id, str) and is_snapshot_id(snapshot_id):
        found["snapshot_id"] = snapshot_id
    return found


def _observe(method: str, code: grpc.StatusCode, started: float) -> None:
    metrics.RPC_REQUESTS.labels(method, code.name).inc()
    metrics.RPC_DURATION.labels(method).observe(time.monotonic() - started)


async def _abort(context: grpc.aio.ServicerContext, error: NasError, request_id: str) -> None:
    status = rpc_status.to_status(to_rpc_status(error, request_id))
    await context.abort(status.code, status.details, status.trailing_metadata)
