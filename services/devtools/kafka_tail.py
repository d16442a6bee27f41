"""Print events from topics as they arrive: `python -m services.devtools.kafka_tail TOPIC...`."""

from __future__ import annotations

import argparse
import asyncio
import sys

from aiokafka import AIOKafkaConsumer


async def tail(bootstrap: str, topics: list[str], from_beginning: bool) -> None:
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest" if from_beginning else "latest")
    await consumer.start()
    try:
        async for msg in consumer:
            headers = {k: v.decode(errors="replace") for k, v in msg.headers}
            print(f"{msg.topic}[{msg.partition}]@{msg.offset} key={msg.key.decode() if msg.key else None} "
                  f"type={headers.get('ce_type')} id={headers.get('ce_id')}")
            print(f"  {msg.value.decode(errors='replace')}", flush=True)
    finally:
        await consumer.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("topics", nargs="+")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--from-beginning", action="store_true")
    args = parser.parse_args(argv)
    try:
        asyncio.run(tail(args.bootstrap, args.topics, args.from_beginning))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
