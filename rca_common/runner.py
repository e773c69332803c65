"""The one way a service process runs: settings, logging, uvloop, signals, exit code."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import NoReturn

from rca_common.logging import get_logger, setup_logging
from rca_common.settings import Settings, settings_or_exit


def run_service(
    name: str,
    serve: Callable[[Settings], Awaitable[int]],
    check: Callable[[Settings], None] | None = None,
) -> NoReturn:
    """Read settings (a bad one exits 2 with one line), set up logging, run ``serve``
    on uvloop and exit with the code it returns. ``check`` may reject settings
    with a ValueError whose message is printed as that one line."""
    settings = settings_or_exit()
    if check is not None:
        try:
            check(settings)
        except ValueError as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            sys.exit(2)
    setup_logging(settings.log_level, settings.log_format, service=name)
    get_logger(name).info("settings", settings=repr(settings))
    try:
        import uvloop

        code = uvloop.run(serve(settings))
    except KeyboardInterrupt:
        code = 0
    sys.exit(code)


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT start the two-stage shutdown."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
