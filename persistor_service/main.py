"""``persistor-service``: run one persistor until SIGTERM/SIGINT."""

from __future__ import annotations

from persistor_service.service import PersistorService
from rca_common.runner import run_service, stop_on_signals
from rca_common.settings import Settings


async def serve(settings: Settings) -> int:
    service = PersistorService(settings)
    stop_on_signals(service.stopped)
    return await service.run()


def main() -> None:
    run_service("persistor-service", serve)


if __name__ == "__main__":
    main()
