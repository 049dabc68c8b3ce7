"""The ``cotir`` command line: the one entry point besides the Dagster UI.

Bad settings end the command with one line naming the variable and exit code 2,
never a traceback.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import entry_points

import click

from cotir_pipeline.provenance import package_versions
from cotir_pipeline.settings import CotirSettings, Profile, SettingsError, load_settings
from cotir_pipeline.store import StoreError, open_store

EXIT_BAD_SETTING = 2
EXIT_CHECK_FAILED = 1


def _settings_or_exit() -> CotirSettings:
    try:
        return load_settings()
    except SettingsError as error:
        click.echo(f"cotir: bad setting: {error}", err=True)
        sys.exit(EXIT_BAD_SETTING)


#: Entry-point group through which other layers add commands (``models`` adds
#: ``restore``) without this library importing them: the layering stays one-way.
PLUGIN_GROUP = "cotir.commands"


class PluginGroup(click.Group):
    """A click group that also offers commands registered under :data:`PLUGIN_GROUP`.

    Plugins load only when their command is listed or run, so ``cotir doctor``
    never imports torch.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx))
        names.update(point.name for point in entry_points(group=PLUGIN_GROUP))
        return sorted(names)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        for point in entry_points(group=PLUGIN_GROUP):
            if point.name == cmd_name:
                loaded = point.load()
                if not isinstance(loaded, click.Command):
                    raise click.ClickException(f"plugin {point.value} is not a click command")
                return loaded
        return None


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """CoTIR data, training and benchmark pipeline.

    Settings come from COTIR_* environment variables (see `cotir settings`).
    """


@cli.command("settings")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of NAME=value lines.")
def show_settings(as_json: bool) -> None:
    """Print the effective settings after validation.

    \b
    Example:
      COTIR_STORE=s3://my-bucket/cotir cotir settings --json
    """
    settings = _settings_or_exit()
    values = settings.model_dump(mode="json")
    if as_json:
        click.echo(json.dumps(values, indent=2, sort_keys=True))
        return
    for name, value in sorted(values.items()):
        click.echo(f"COTIR_{name.upper()}={'' if value is None else value}")


@cli.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor(as_json: bool) -> None:
    """Check the settings, the object store and the installed packages.

    Exits 0 when everything needed by the current profile works, 1 when a check
    fails, 2 on a bad setting.

    \b
    Example:
      COTIR_STORE=s3://cotir/demo COTIR_S3_ENDPOINT_URL=http://127.0.0.1:7480 cotir doctor
    """
    settings = _settings_or_exit()
    checks: list[dict[str, str]] = [
        {"check": "settings", "status": "ok", "detail": f"profile={settings.profile.value}"}
    ]
    try:
        open_store(settings).check()
        checks.append({"check": "store", "status": "ok", "detail": settings.store})
    except StoreError as error:
        checks.append({"check": "store", "status": "failed", "detail": str(error)})
    if settings.weights_dir is not None:
        checks.append({"check": "weights", "status": "ok", "detail": str(settings.weights_dir)})
    elif settings.profile is Profile.FULL:
        checks.append(
            {"check": "weights", "status": "failed", "detail": "COTIR_WEIGHTS_DIR: not set"}
        )
    else:
        checks.append(
            {"check": "weights", "status": "ok", "detail": "not needed by the demo profile"}
        )
    for name, version in package_versions().items():
        checks.append(
            {
                "check": f"package {name}",
                "status": "ok" if version else "missing",
                "detail": version or "not installed",
            }
        )
    failed = [check for check in checks if check["status"] != "ok"]
    if as_json:
        click.echo(json.dumps({"ok": not failed, "checks": checks}, indent=2))
    else:
        for check in checks:
            click.echo(f"{check['status']:>7}  {check['check']:<28} {check['detail']}")
    if failed:
        sys.exit(EXIT_CHECK_FAILED)


def main() -> None:
    """Console-script entry point."""
    cli()


if __name__ == "__main__":
    main()
