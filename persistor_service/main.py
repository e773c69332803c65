"""``persistor-service``: run one persistor until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
import sys

from persistor_service.service import PersistorService
from rca_common.logging import get_logger, setup_logging
from rca_common.settings import Settings, settings_or_exit


async def serve(settings: Settings) -> int:
    service = PersistorService(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stopped.set)
    return await service.run()


def main() -> None:
    settings = settings_or_exit()
    setup_logging(settings.log_level, settings.log_format, service="persistor-service")
    get_logger("persistor_service").info("settings", settings=repr(settings))
    try:
        import uvloop

        code = uvloop.run(serve(settings))
    except KeyboardInterrupt:
        code = 0
    sys.exit(code)


if __name__ == "__main__":
    main()
