"""``graph-service``: run one instance until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
import sys

from graph_service import crashpoints
from graph_service.service import GraphService
from rca_common.logging import get_logger, setup_logging
from rca_common.settings import Settings, settings_or_exit


async def serve(settings: Settings) -> int:
    service = GraphService(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stopped.set)
    try:
        await service.start()
        await service.stopped.wait()
    finally:
        await service.stop()
    return service.exit_code


def main() -> None:
    settings = settings_or_exit()
    try:
        crashpoints.configure(settings.drill_crash_at)
    except ValueError as exc:
        print(
            f"configuration error: DRILL_CRASH_AT={settings.drill_crash_at!r}: {exc}",
            file=sys.stderr,
        )
        sys.exit(2)
    setup_logging(settings.log_level, settings.log_format, service="graph-service")
    log = get_logger("graph_service")
    log.info("settings", settings=repr(settings))
    try:
        import uvloop

        code = uvloop.run(serve(settings))
    except KeyboardInterrupt:
        code = 0
    sys.exit(code)


if __name__ == "__main__":
    main()
