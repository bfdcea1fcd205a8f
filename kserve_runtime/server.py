"""Run the models on KServe's data plane with our bind address.

KServe's `ModelServer.start` binds REST to 0.0.0.0 and gRPC to [::] unconditionally; the local stack keeps every
listener on loopback, and a pod wants 0.0.0.0. So the same public parts are wired here with `KSERVE_HOST`:
ModelServer's model registry and data plane, KServe's v1/v2 endpoints, exception handlers and /metrics on its
FastAPI app (after our routes), uvicorn, and KServe's gRPC InferenceServicer with its interceptors on a grpc.aio
server. Left out: RESTServer's timing middleware, which logs every request's timings through `logging` and took
29 % of the event loop at saturation in a py-spy profile (the event loop was the bottleneck).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import uvicorn
from grpc import aio
from kserve import ModelServer, errors
from kserve.model_server import app
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.rest.server import metrics_handler
from kserve.protocol.rest.v1_endpoints import register_v1_endpoints
from kserve.protocol.rest.v2_endpoints import register_v2_endpoints

from kserve_runtime import LOGGER_NAME
from kserve_runtime.config import RuntimeConfig
from kserve_runtime.model import ModerationModel

log = logging.getLogger(LOGGER_NAME)
# KServe's own errors on its routes (health, readiness, metadata of v1): its handlers, as RESTServer registers them.
KSERVE_ERROR_HANDLERS = {
    errors.InvalidInput: errors.invalid_input_handler,
    errors.InferenceError: errors.inference_error_handler,
    errors.ModelNotFound: errors.model_not_found_handler,
    errors.ModelNotReady: errors.model_not_ready_handler,
    errors.ServerNotLive: errors.server_not_live_handler,
    errors.ServerNotReady: errors.server_not_ready_handler,
    NotImplementedError: errors.not_implemented_error_handler,
}
GRACE_PERIOD_S = 30
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # several 20 MB images per gRPC request


async def serve(cfg: RuntimeConfig, models: list[ModerationModel]) -> None:
    """REST and gRPC until SIGTERM/SIGINT (uvicorn's handlers), then both stop within the grace period."""
    server = ModelServer(http_port=cfg.http_port, grpc_port=cfg.grpc_port, enable_grpc=False,
                         enable_docs_url=False)
    for model in models:
        server.register_model(model)
    app.add_api_route("/metrics", metrics_handler, methods=["GET"])
    app.add_api_route("/", server.dataplane.live)
    register_v1_endpoints(app, server.dataplane, server.model_repository_extension)
    register_v2_endpoints(app, server.dataplane, server.model_repository_extension)
    for error, handler in KSERVE_ERROR_HANDLERS.items():
        app.add_exception_handler(error, handler)
    rest = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.http_port, log_config=None,
                                         timeout_graceful_shutdown=GRACE_PERIOD_S, access_log=False))
    grpc_server = aio.server(
        ThreadPoolExecutor(max_workers=4),
        interceptors=(LoggingInterceptor(), ExceptionToStatusInterceptor()),
        options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)],
    )
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(server.dataplane, server.model_repository_extension), grpc_server)
    grpc_server.add_insecure_port(f"{cfg.host}:{cfg.grpc_port}")
    await grpc_server.start()
    log.info("serving %s: REST http://%s:%d, OIP v2 gRPC %s:%d", ", ".join(m.name for m in models),
             cfg.host, cfg.http_port, cfg.host, cfg.grpc_port)
    try:
        await rest.serve()
    finally:
        await grpc_server.stop(grace=GRACE_PERIOD_S)
        for model in models:
            await model.close()
