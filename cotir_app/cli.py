"""``cotir app``: start the restoration web app on this machine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from cotir_pipeline.settings import SettingsError, load_settings


@click.command("app")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where restored PNGs are written (default: <COTIR_HOME>/app-outputs).",
)
@click.option("--device", default="cpu", show_default=True, help="Default torch device.")
def app(host: str, port: int, output_dir: Path | None, device: str) -> None:
    """Start the restoration app: upload an image, pick identity, the classical chain or a
    CoTIR checkpoint (those under <COTIR_HOME>/training are listed), restore, compare,
    refine turn by turn. Runs until interrupted.

    \b
    After `make demo`:
      cotir app            # then open http://127.0.0.1:7860
    """
    try:
        settings = load_settings()
    except SettingsError as error:
        click.echo(f"cotir: bad setting: {error}", err=True)
        sys.exit(2)
    # Gradio reads these when imported: no usage reports and no update checks, so the
    # app runs offline.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("GRADIO_TELEMETRY_ENABLED", "False")
    from cotir_app.ui import build_app

    outputs = output_dir or settings.home / "app-outputs"
    page = build_app(settings.home / "training", outputs, default_device=device)
    click.echo(f"cotir app: http://{host}:{port} (outputs in {outputs})", err=True)
    page.queue(default_concurrency_limit=1).launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        show_error=True,
        ssr_mode=False,
        allowed_paths=[str(outputs)],
        quiet=True,
    )
