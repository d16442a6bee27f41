"""The `ampgate` command: one entry point for every service (DESIGN.md §8)."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys

from services.common.errors import ConfigError
from services.common.logging import configure_logging
from services.common.settings import load_settings

# command -> module with `run(settings) -> None`
COMMANDS = {
    "gateway": ("services.gateway.main", "the unified API gateway"),
    "history": ("services.history.main", "worker: stores every version, serves history queries"),
    "webhooks": ("services.webhooks.main", "worker: delivers signed webhooks"),
    "sandbox": ("services.sandbox.main", "simulators of the five upstream endpoints"),
    "dev": ("services.devtools.devstack", "the whole stack on this machine: sandbox, broker, gateway, workers"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ampgate", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ampgate {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        command = sub.add_parser(name, help=help_)
        if name == "dev":
            command.add_argument("--replicas", type=_positive, default=1, metavar="N",
                                 help="run N gateway replicas in cluster mode on consecutive "
                                      "ports, sharing a local Redis (default 1)")
    dlq = sub.add_parser("dlq", help="dead-letter topics").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    replay = dlq.add_parser("replay", help="republish dead letters to their original topic")
    replay.add_argument("--topic", required=True, help="the dead-letter topic to replay")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"ampgate {args.command}: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log)
    if args.command == "dlq":
        return _dlq_replay(settings, args.topic)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        if args.command == "dev":
            module.run(settings, replicas=args.replicas)
        else:
            module.run(settings)
    except ConfigError as exc:
        print(f"ampgate {args.command}: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def _dlq_replay(settings, topic: str) -> int:
    from aiokafka.errors import KafkaError

    from services.common.dlq import ReplayError, replay
    from services.common.runner import run

    try:
        count = run(replay(settings.kafka, topic))
    except ReplayError as exc:
        print(f"ampgate dlq replay: {exc}", file=sys.stderr)
        return 2
    except (KafkaError, OSError) as exc:
        print(f"ampgate dlq replay: Kafka at {settings.kafka.bootstrap_servers}: "
              f"{type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return 1
    print(f"replayed {count} dead letters from {topic}")
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _version() -> str:
    try:
        return importlib.metadata.version("ampgate")
    except importlib.metadata.PackageNotFoundError:  # a checkout that was never installed
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
