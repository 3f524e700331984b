"""`cnntool serve`: bundles as an HTTP prediction service (FastAPI app run by uvicorn)."""

from __future__ import annotations

import functools
import ipaddress
import socket
from pathlib import Path
from typing import Annotated

import typer

from cnntool.cli.output import note

# The library, numpy, numba, pydantic and rich are imported inside each command, so that
# `cnntool --help` and shell completion stay fast (cli/__init__.py).


def serve(
    bundles: Annotated[
        list[Path],
        typer.Argument(
            help="Trained bundles (.cnnb), or folders of them; a model is named after its file.",
            show_default=False,
        ),
    ],
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
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="CNNTOOL_API_KEY",
            help="Require Authorization: Bearer KEY on every route but health and metrics.",
            show_default=False,
        ),
    ] = None,
    allow_unauthenticated: Annotated[
        bool, typer.Option(help="Allow a non-loopback --host without --api-key.")
    ] = False,
) -> None:
    """Serve predictions over HTTP: /v1/models/NAME/predict (/v1/predict for one model), the
    Open Inference Protocol at /v2, /healthz, /readyz, /metrics, API docs at /docs and a
    drawing page at /."""
    import uvicorn

    from cnntool.bundle import load_bundle
    from cnntool.errors import CnntoolError
    from cnntool.inference.warmup import warm_requests
    from cnntool.serve import ServeSettings, create_app
    from cnntool.serve.models import model_name
    from cnntool.system.threads import available_cpus, set_threads

    if not api_key and not allow_unauthenticated and not is_loopback(host):
        raise CnntoolError(
            f"refusing to serve on {host} without a key: anyone who can reach it could use the models; "
            "pass --api-key KEY (or set CNNTOOL_API_KEY), or --allow-unauthenticated if that is wanted"
        )
    paths = bundle_files(bundles)
    threads = threads or max(1, available_cpus() // workers)
    settings = ServeSettings(
        bundles=[str(path) for path in paths],
        host=host,
        port=port,
        workers=workers,
        threads=threads,
        max_body_bytes=max_body_bytes,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        access_log=access_log,
        api_key=api_key or None,
    )
    # A bad bundle is an error here, before any server starts.
    loaded = {model_name(path): load_bundle(path) for path in paths}
    check_port_free(host, port)
    for name, bundle in loaded.items():
        note(f"model {name!r}: {bundle.network.name!r} ({bundle.digest[:19]}...)")
    note(
        f"serving {len(loaded)} model(s) on http://{host}:{port} with {workers} worker(s), "
        f"{threads} thread(s) each{'; API key required' if api_key else ''}; "
        "drawing page at /, API docs at /docs"
    )
    run = functools.partial(
        uvicorn.run, host=host, port=port, access_log=access_log, timeout_graceful_shutdown=10
    )
    if workers == 1:
        run(create_app(settings, loaded))
        return
    # Compile (or load from numba's cache) every kernel once here, so the workers find the
    # cache filled instead of all compiling at the same time.
    set_threads(threads)
    for bundle in loaded.values():
        warm_requests(bundle, [1])
    settings.to_environment()
    run("cnntool.serve.app:app_from_environment", factory=True, workers=workers)


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


def bundle_files(arguments: list[Path]) -> list[Path]:
    """The bundle files named, a folder standing for every .cnnb in it; names must differ."""
    from cnntool.errors import CnntoolError
    from cnntool.serve.models import model_name

    paths: list[Path] = []
    for argument in arguments:
        if argument.is_dir():
            found = sorted(argument.glob("*.cnnb"))
            if not found:
                raise CnntoolError(
                    f"{argument}: is a folder without .cnnb bundles; name a bundle or a folder of them"
                )
            paths += found
        else:
            paths.append(argument)
    seen: dict[str, Path] = {}
    for path in paths:
        name = model_name(path)
        if name in seen:
            raise CnntoolError(
                f"two bundles would both be model {name!r}: {seen[name]} and {path}; rename one of them"
            )
        seen[name] = path
    return paths


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
