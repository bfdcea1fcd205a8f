"""Run the models on KServe's data plane with our bind address.

KServe's `ModelServer.start` binds REST to 0.0.0.0 and gRPC to [::] unconditionally; the local stack keeps every
listener on loopback, and a pod wants 0.0.0.0. So the same public parts are wired here with `KSERVE_HOST`:
ModelServer's model registry and data plane, RESTServer's application (KServe's routes after ours), uvicorn,
and KServe's gRPC InferenceServicer with its interceptors on a grpc.aio server.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import uvicorn
from grpc import aio
from kserve import ModelServer
from kserve.model_server import FASTAPI_APP_IMPORT_STRING, app
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.rest.server import RESTServer

from kserve_runtime.config import RuntimeConfig
from kserve_runtime.model import ModerationModel

log = logging.getLogger("kserve_runtime")
GRACE_PERIOD_S = 30
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # several 20 MB images per gRPC request


async def serve(cfg: RuntimeConfig, models: list[ModerationModel]) -> None:
    """REST and gRPC until SIGTERM/SIGINT (uvicorn's handlers), then both stop within the grace period."""
    server = ModelServer(http_port=cfg.http_port, grpc_port=cfg.grpc_port, enable_grpc=False,
                         enable_docs_url=False)
    for model in models:
        server.register_model(model)
    RESTServer(FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension,
               cfg.http_port).create_application()
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
