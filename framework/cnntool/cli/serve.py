"""`cnntool serve`: a bundle as an HTTP prediction service (FastAPI app run by uvicorn)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import typer

from cnntool.cli.output import note


def serve(
    bundle: Annotated[Path, typer.Argument(help="A trained bundle (.cnnb).", show_default=False)],
    host: Annotated[
        str, typer.Option(help="Address to listen on; 0.0.0.0 exposes the server to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    workers: Annotated[
        int, typer.Option(min=1, help="Server processes, each with its own copy of the model.")
    ] = 1,
    threads: Annotated[
        int | None,
        typer.Option(min=1, help="numba and BLAS threads per process [default: CPUs / workers]."),
    ] = None,
    max_body_bytes: Annotated[
        int, typer.Option(min=1024, help="Largest request body accepted; larger ones get 413.")
    ] = 8 << 20,
    max_batch: Annotated[
        int, typer.Option(min=1, help="Most inputs run through the network in one call.")
    ] = 64,
    max_wait_ms: Annotated[
        float, typer.Option(min=0.0, help="Longest a request waits for others to share its batch.")
    ] = 2.0,
    access_log: Annotated[bool, typer.Option(help="Log one line per request.")] = True,
) -> None:
    """Serve predictions over HTTP: /v1/predict, /v1/model, /healthz, /readyz, /metrics,
    API docs at /docs and a drawing page at /."""
    import uvicorn

    from cnntool.bundle import load_bundle
    from cnntool.serve import ServeSettings, create_app
    from cnntool.serve.service import warm_up
    from cnntool.threads import available_cpus, set_threads

    threads = threads or max(1, available_cpus() // workers)
    settings = ServeSettings(
        bundle=str(bundle),
        host=host,
        port=port,
        workers=workers,
        threads=threads,
        max_body_bytes=max_body_bytes,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        access_log=access_log,
    )
    loaded = load_bundle(bundle)  # a bad bundle is an error here, before any server starts
    check_port_free(host, port)
    note(
        f"serving {loaded.network.name!r} ({loaded.digest[:19]}...) on http://{host}:{port} "
        f"with {workers} worker(s), {threads} thread(s) each; drawing page at /, API docs at /docs"
    )
    options = {"host": host, "port": port, "access_log": access_log, "timeout_graceful_shutdown": 10}
    if workers == 1:
        uvicorn.run(create_app(settings, loaded), **options)
        return
    # Compile (or load from numba's cache) every kernel once here, so the workers find the
    # cache filled instead of all compiling at the same time.
    set_threads(threads)
    warm_up(loaded, [1])
    settings.to_environment()
    uvicorn.run("cnntool.serve.app:app_from_environment", factory=True, workers=workers, **options)


def check_port_free(host: str, port: int) -> None:
    """Fail with one clear line if the address is taken, rather than in uvicorn's log."""
    from cnntool.errors import CnntoolError

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise CnntoolError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another --port or --host"
        ) from None
