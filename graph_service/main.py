"""``graph-service``: run one instance until SIGTERM/SIGINT."""

from __future__ import annotations

from graph_service import crashpoints, gc_policy
from graph_service.service import GraphService
from rca_common.runner import run_service, stop_on_signals
from rca_common.settings import Settings


async def serve(settings: Settings) -> int:
    gc_policy.configure()
    service = GraphService(settings)
    stop_on_signals(service.stopped)
    try:
        await service.start()
        await service.stopped.wait()
    finally:
        await service.stop()
    return service.exit_code


def _check(settings: Settings) -> None:
    try:
        crashpoints.configure(settings.drill_crash_at)
    except ValueError as exc:
        raise ValueError(f"DRILL_CRASH_AT={settings.drill_crash_at!r}: {exc}") from None


def main() -> None:
    run_service("graph-service", serve, _check)


if __name__ == "__main__":
    main()
