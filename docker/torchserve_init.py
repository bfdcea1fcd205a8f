"""PID 1 of the predictor image: TorchServe's launcher (`torchserve --start --foreground ...`) with SIGTERM reaching
the Java frontend.

The kernel drops a signal sent to a container's PID 1 unless that process handles it, and TorchServe's launcher
(the `torchserve` script: it starts the JVM and waits for it) handles only SIGINT. Run as the container's command,
the kubelet's SIGTERM did nothing: every predictor pod sat out its whole grace period (30 s) after its preStop
sleep and was then SIGKILLed, its in-flight requests reset. Here the launcher runs in this process with SIGTERM
and SIGINT passed on to its children (the JVM): TorchServe's shutdown hook stops the model workers and the JVM
exits within seconds; the launcher then returns, and so does this process. Same arguments as `torchserve`.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

import psutil  # TorchServe's own dependency
from ts.model_server import start


def forward(signum: int, _frame: FrameType | None) -> None:
    """Pass the signal to the launcher's children; before the JVM exists there is nothing to stop, so leave."""
    children = psutil.Process().children()
    if not children:
        sys.exit(128 + signum)
    for child in children:
        try:
            child.send_signal(signum)
        except psutil.NoSuchProcess:
            continue


def main() -> None:
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    sys.argv[0] = "torchserve"
    start()


if __name__ == "__main__":
    main()
