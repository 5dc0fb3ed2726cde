"""`chextriev serve`: run the HTTP service with uvicorn (settings from CHEXTRIEV_* variables)."""

from __future__ import annotations

import argparse
import sys

from service.settings import Settings, SettingsError, get_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `serve` subcommand."""
    parser = subparsers.add_parser("serve", help="serve the retrieval API (POST /search, GET /saliency, ...)")
    parser.add_argument("--host", help="address to listen on (default: $CHEXTRIEV_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default: $CHEXTRIEV_PORT or 8000)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; the model and index load in the background (watch GET /readyz).
    Settings that cannot work stop the start with a message naming each variable (exit status 2)."""
    try:
        settings = get_settings()
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    overrides = {name: value for name, value in (("host", args.host), ("port", args.port)) if value is not None}
    serve(settings.model_copy(update=overrides))
    return 0


def serve(settings: Settings) -> None:
    """Serve `create_app(settings)` on settings.host:settings.port until interrupted.

    Logging stays the JSON lines the CLI configured; the app logs one line per request itself, so
    uvicorn's own access log is off.
    """
    import uvicorn  # the application's imports (torch, the model) wait until it really starts

    from service.app import create_app

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None, access_log=False)
