"""The `wahookd` command line. The only module that exits."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from wahookd import __version__
from wahookd.errors import ConfigError, WahookdError

DESCRIPTION = """\
wahookd receives WhatsApp webhooks (WasenderAPI, Meta Cloud API, Twilio, WAHA, Evolution API,
Standard Webhooks), verifies them, makes each event durable before answering 200, downloads
their media and delivers every event to its sinks (file, forward, sql, plugins)."""

EPILOG = """\
configuration:
  One TOML file: --config, else $WAHOOKD_CONFIG, else /etc/wahookd/wahookd.toml (absent:
  embedded defaults, state in ./wahookd-data or $STATE_DIRECTORY). Every key can be set from
  the environment as WAHOOKD_<SECTION>__<KEY> (lists as JSON or comma-separated). Secrets can
  be given as <key>_file; relative paths resolve against $CREDENTIALS_DIRECTORY, else the
  config file's directory. Check a file with `wahookd check-config` before (re)loading it.

signals (serve):
  SIGTERM/SIGINT  drain: stop accepting, finish requests and deliveries, exit 0
  SIGHUP          reload the configuration (sources, rate limits, sink filters and retries,
                  log level, TLS certificate); an invalid file changes nothing

exit status: 0 ok, 1 an error (one line "wahookd: error: ..." per problem)"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wahookd",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"wahookd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--config", help="TOML file (default $WAHOOKD_CONFIG, then /etc/wahookd/wahookd.toml)"
        )
        return sub

    command("serve", "run the daemon in the foreground (systemd Type=notify)")
    command("check-config", "validate the configuration: exit 0, or 1 with one line per problem")

    send = command("send-test", "post a correctly signed sample webhook for a source")
    send.add_argument("--source", required=True, help="the source name in [sources.<name>]")
    send.add_argument("--kind", default="text", choices=["text", "image", "status"])
    send.add_argument("--url", help="where to post (default: this config's listen address)")

    replay = command("replay", "re-deliver dead letters (--dead) or the journal to sinks")
    replay.add_argument("--sink", help="only this sink (default: every sink)")
    replay.add_argument("--dead", action="store_true", help="re-deliver dead letters")
    replay.add_argument("--since", help="only events received at or after this RFC 3339 time")

    reload = command("reload", "reload the running daemon's configuration and wait for its verdict")
    reload.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")

    status = command("status", "journal size, per-sink backlog and dead letters, dedupe fill")
    status.add_argument("--json", action="store_true", help="print the figures as JSON")
    command("plugins", "installed plugins and the sinks and providers they provide")

    for name, text in (
        ("pause", "hold a sink's delivery (events wait)"),
        ("resume", "let a paused sink go on"),
    ):
        sub = command(name, f"{text}; the running daemon obeys within a second")
        sub.add_argument("sink", help="the sink name in [sinks.<name>]")

    trace = command("trace", "everything known about one event: received, media, and per sink")
    trace.add_argument(
        "id", help="event id, its event_ref from the logs, a provider message id, or a phone/LID"
    )
    trace.add_argument("--json", action="store_true", help="print it as JSON")
    trace.add_argument("--raw", action="store_true", help="include the provider's raw payload")
    trace.add_argument("--limit", type=int, default=10, help="most events shown for a contact (default 10)")

    forget = command("forget", "erase a contact's events, dead letters, rejected bodies and media")
    forget.add_argument("contact", help="phone number (digits; + and spaces allowed) or a …@lid address")
    forget.add_argument(
        "--wait", type=float, default=30.0, help="seconds to let its media downloads finish (default 30)"
    )
    fsck = command("fsck", "check the journal: exit 0 when sound, 1 with one line per problem")
    fsck.add_argument("--repair", action="store_true", help="fix what can be fixed without losing an event")

    new_sink_help = "write a sink plugin distribution wahookd-NAME whose tests run the conformance suite"
    new_sink = commands.add_parser("new-sink", help=new_sink_help, description=new_sink_help)
    new_sink.add_argument("name", metavar="NAME", help='the sink name users will write as plugin = "NAME"')
    new_sink.add_argument("--dir", default=".", help="where to write wahookd-NAME/ (default: here)")
    return parser


def _handler(command: str) -> Callable[[argparse.Namespace], int]:
    # Imported lazily so that `wahookd plugins` does not pay for Tornado, and so on.
    if command == "serve":
        from wahookd.daemon import run_serve

        return run_serve
    if command == "check-config":
        return check_config
    if command == "send-test":
        from wahookd.sendtest import run_send_test

        return run_send_test
    if command == "trace":
        from wahookd.trace import run_trace

        return run_trace
    if command == "forget":
        from wahookd.privacy import run_forget

        return run_forget
    if command == "fsck":
        from wahookd.fsck import run_fsck

        return run_fsck
    if command == "new-sink":
        from wahookd.newsink import run_new_sink

        return run_new_sink
    from wahookd import admin

    commands = {
        "replay": admin.run_replay,
        "status": admin.run_status,
        "plugins": admin.run_plugins,
        "reload": admin.run_reload,
        "pause": admin.run_pause,
        "resume": admin.run_resume,
    }
    return commands[command]


def check_config(args: argparse.Namespace) -> int:
    from wahookd.daemon import prepare

    prepare(args.config)  # raises ConfigError with every problem
    print("configuration ok")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _handler(args.command)(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"wahookd: error: {problem}", file=sys.stderr)
        return 1
    except WahookdError as exc:
        print(f"wahookd: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
