"""`microkit events ...`: publish, tail, dead letters and replay, against the project's events store."""

from __future__ import annotations

import json
import time

import click

from microkit import config
from microkit.errors import MicrokitError, UsageError

config_option = click.option(
    "-c", "--config", "config_file", type=click.Path(dir_okay=False), default=None,
    help="microkit.toml to use (default: $MICROKIT_CONFIG, else the nearest in this folder or a parent).")


def _configure(config_file: str | None, source: str = "cli"):
    from microkit import events
    from microkit.events.settings import resolve

    found = events.configure(resolve(config.discover(config_file), source))
    return events, found


@click.group("events")
def events_group() -> None:
    """Events between services: publish, watch, dead letters, replay.

    The store is [events] url (amqp:// or redis://), else the registry's Redis, else the embedded SQLite
    store in .microkit/events.db.
    """


@events_group.command("publish")
@click.argument("event_type", metavar="TYPE")
@click.argument("payload", metavar="JSON", default="null")
@click.option("--source", default="cli", show_default=True, help="The source service written in the envelope.")
@config_option
def publish(event_type: str, payload: str, source: str, config_file: str | None) -> None:
    """Publish an event of TYPE with the JSON payload, e.g. `microkit events publish orders.paid '{"id": 1}'`."""
    try:
        data = json.loads(payload)
    except ValueError as exc:
        raise UsageError(f"JSON: not valid JSON ({exc}): {payload!r}") from None
    events, _ = _configure(config_file, source)
    try:
        event = events.publish(event_type, data)
    finally:
        events.backend().close()
    click.echo(event.id)


@events_group.command("tail")
@click.argument("types", nargs=-1, metavar="[TYPE]...")
@click.option("--count", "-n", type=click.IntRange(min=1), default=None, help="Exit after this many events.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Exit after this many seconds.")
@config_option
def tail(types: tuple[str, ...], count: int | None, timeout: float | None, config_file: str | None) -> None:
    """Print events as they are published (of the TYPEs given, or all), one JSON line each, until Ctrl-C."""
    from microkit.events.envelope import check_type

    for event_type in types:
        check_type(event_type)
    events, found = _configure(config_file)
    seen = [0]
    deadline = None if timeout is None else time.monotonic() + timeout

    def show(event) -> None:
        click.echo(json.dumps({"id": event.id, "type": event.type, "source": event.source, "time": event.time,
                               "request_id": event.request_id, "payload": event.payload}), nl=True)
        seen[0] += 1

    def ready() -> None:  # said once the tail is in place: what is published after this line is shown
        click.echo(f"tailing {', '.join(types) or 'every type'} on {found.scheme}:// (Ctrl-C stops)", err=True)

    try:
        events.backend().tail(list(types), show, lambda: (count is not None and seen[0] >= count) or (
            deadline is not None and time.monotonic() >= deadline), ready)
    finally:
        events.backend().close()


@events_group.command("dead")
@click.argument("service", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@config_option
def dead(service: str | None, as_json: bool, config_file: str | None) -> None:
    """The dead letters (of SERVICE): events whose handler failed every retry, with the error."""
    from microkit import overview

    events, _ = _configure(config_file)
    try:
        letters = events.backend().dead(service)
    finally:
        events.backend().close()
    if as_json:
        click.echo(json.dumps([letter.to_dict() for letter in letters], indent=2))
        return
    if not letters:
        click.echo("no dead letters" + (f" for {service}" if service else ""))
        return
    rows = [("ID", "TYPE", "SERVICE", "DIED", "ERROR")]
    rows += [(l.event.id, l.event.type, l.service, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(l.dead_at)),
              l.error.splitlines()[-1][:80] if l.error else "") for l in letters]
    click.echo(overview.table(rows))


@events_group.command("replay")
@click.argument("event_id", metavar="ID", required=False)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
@config_option
def replay(event_id: str | None, replay_all: bool, config_file: str | None) -> None:
    """Send the dead letter ID (or --all) back to the group it died in, to be handled again."""
    if (event_id is None) == (not replay_all):
        raise UsageError("give one event ID or --all (see `microkit events dead`)")
    events, _ = _configure(config_file)
    try:
        count = events.backend().replay(None if replay_all else event_id)
    finally:
        events.backend().close()
    if event_id and not count:
        raise MicrokitError(f"no dead letter with id {event_id!r} (see `microkit events dead`)")
    click.echo(f"replayed {count} event(s)")
