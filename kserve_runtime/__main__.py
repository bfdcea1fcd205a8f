"""`python -m kserve_runtime`: serve every archive of the model store on KServe's ModelServer (REST + gRPC).

Configuration: environment variables of `kserve_runtime/config.py` (no command-line flags: KServe parses its own
at import time).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path

from kserve_runtime import LOGGER_NAME
from kserve_runtime.archives import archives_in
from kserve_runtime.config import RuntimeConfig

log = logging.getLogger(LOGGER_NAME)


def main() -> None:
    cfg = RuntimeConfig.from_env()
    from kserve.logging import configure_logging
    from kserve.model_server import app

    configure_logging()  # before the models load, as KServe asks, so their "loaded ..." lines are printed

    from kserve_runtime.metrics import install_frontend_counters
    from kserve_runtime.model import ModerationModel
    from kserve_runtime.rest import install
    from kserve_runtime.server import serve

    # Without KSERVE_WORKDIR the archives are unpacked only while the models load (the scorers keep their graphs
    # in memory), so a local run leaves nothing behind in /tmp.
    with tempfile.TemporaryDirectory(prefix="kserve-runtime-") as scratch:
        workdir = Path(cfg.workdir or scratch)
        models = [ModerationModel(archive) for archive in archives_in(cfg.model_store, workdir, cfg.models or None)]
        for model in models:
            model.load()
            assert model.scorer is not None
            log.info("loaded %s", model.scorer.describe())
            if model.scorer.provenance.warning:
                log.warning("%s", model.scorer.provenance.warning)
    install(app, {m.name: m for m in models}, cfg.max_body_bytes)
    install_frontend_counters()
    try:  # uvloop, as uvicorn would pick itself: the stdlib loop's socket handling dominated a saturation profile
        import uvloop

        uvloop.install()
    except ImportError:
        log.info("uvloop not installed: serving on the standard asyncio event loop")
    asyncio.run(serve(cfg, models))


if __name__ == "__main__":
    main()
