"""Python side of the iotpipe Kafka test harness.

``KafkaBroker`` drives ``kafka.sh`` (a real single-node Apache Kafka 4.x
broker in KRaft mode, started from jars fetched with Maven); ``produce`` and
``high_watermarks`` talk to the broker with confluent-kafka, which is imported
only when they are called, so the module itself needs the standard library
only.

Example::

    from kafka_harness import KafkaBroker, produce, high_watermarks

    broker = KafkaBroker("/tmp/iotpipe-kafka", 19092)
    broker.start()                       # fresh data, waits until ready
    broker.create_topic("sensors", 4)
    produce(broker.bootstrap, "sensors",
            ((b"dev-1", b'{"t": 21.5}') for _ in range(1000)))
    assert sum(high_watermarks(broker.bootstrap, "sensors").values()) == 1000
    broker.stop_keep_data(); time.sleep(30); broker.start_keep_data()
    broker.stop()
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

__all__ = [
    "KAFKA_SH",
    "KafkaBroker",
    "KafkaHarnessError",
    "produce",
    "high_watermarks",
]

KAFKA_SH = Path(__file__).resolve().with_name("kafka.sh")

DEFAULT_DIR = "/tmp/iotpipe-kafka"
DEFAULT_PORT = 19092


class KafkaHarnessError(RuntimeError):
    """A kafka.sh command or a delivery failed."""


def _run_kafka_sh(args: Sequence[str], timeout: float) -> str:
    cmd = ["bash", str(KAFKA_SH), *args]
    try:
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise KafkaHarnessError(
            f"{' '.join(cmd)} timed out after {timeout}s\n{exc.stderr or ''}"
        ) from exc
    if proc.returncode != 0:
        raise KafkaHarnessError(
            f"{' '.join(cmd)} failed with exit code {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout}--- stderr ---\n{proc.stderr}"
        )
    return proc.stdout


class KafkaBroker:
    """A single-node Kafka broker managed by kafka.sh.

    ``dir`` holds the config, data, broker.log and broker.pid; ``port`` is the
    PLAINTEXT port on 127.0.0.1 (the KRaft controller listens on port+1).
    """

    def __init__(
        self,
        dir: Union[str, os.PathLike] = DEFAULT_DIR,  # noqa: A002 - brief's name
        port: int = DEFAULT_PORT,
        command_timeout: float = 180.0,
    ) -> None:
        self.dir = str(Path(dir).resolve())
        self.port = int(port)
        self.command_timeout = command_timeout

    # -- plumbing --------------------------------------------------------
    def _sh(self, command: str, *args: str, port: bool = True) -> str:
        argv = [command, *args, "--dir", self.dir]
        if port:
            argv += ["--port", str(self.port)]
        return _run_kafka_sh(argv, self.command_timeout)

    @property
    def bootstrap(self) -> str:
        """The bootstrap.servers value, e.g. ``127.0.0.1:19092``."""
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> str:
        return os.path.join(self.dir, "broker.log")

    # -- lifecycle -------------------------------------------------------
    @staticmethod
    def fetch() -> None:
        """Download the broker jars (no-op when cached)."""
        _run_kafka_sh(["fetch"], 900.0)

    def start(self) -> str:
        """Start a fresh broker (its old data is wiped); returns bootstrap."""
        self._sh("start")
        return self.bootstrap

    def stop(self) -> None:
        """Stop the broker and delete its data; idempotent."""
        self._sh("stop", port=False)

    def stop_keep_data(self) -> None:
        """Stop the broker, keeping data and port for start_keep_data()."""
        self._sh("stop-keep-data", port=False)

    def start_keep_data(self) -> str:
        """Start again on the kept data; waits until all partitions are led."""
        self._sh("start-keep-data")
        return self.bootstrap

    def restart_keep_data(self) -> str:
        self._sh("restart-keep-data")
        return self.bootstrap

    def is_running(self) -> bool:
        try:
            self._sh("status", port=False)
        except KafkaHarnessError:
            return False
        return True

    # -- topics ----------------------------------------------------------
    def create_topic(
        self, name: str, partitions: int, config: Optional[Mapping[str, str]] = None
    ) -> None:
        """Create a topic (replication factor 1); waits until all its
        partitions have a leader."""
        extra: list = []
        for key, value in (config or {}).items():
            extra += ["--config", f"{key}={value}"]
        self._sh("topic-create", name, str(int(partitions)), *extra)

    def add_partitions(self, name: str, n: int) -> None:
        """Grow topic ``name`` to ``n`` partitions in total."""
        self._sh("topic-add-partitions", name, str(int(n)))

    def delete_topic(self, name: str) -> None:
        """Delete a topic (no error if missing); waits until it is gone."""
        self._sh("topic-delete", name)

    def list_topics(self) -> list:
        out = self._sh("topic-list")
        return [line for line in out.splitlines() if line.strip()]

    # -- context manager: fresh broker, stopped (and wiped) on exit -------
    def __enter__(self) -> "KafkaBroker":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"KafkaBroker(dir={self.dir!r}, port={self.port})"


def produce(
    bootstrap: str,
    topic: str,
    messages: Iterable[Tuple[Optional[bytes], Optional[bytes]]],
    *,
    partition: Optional[int] = None,
    config: Optional[Mapping[str, object]] = None,
    flush_timeout: float = 120.0,
) -> int:
    """Produce ``(key, value)`` pairs to ``topic``; returns the number sent.

    Tuned for throughput (linger, large batches, idempotent acks=all, no
    compression; pass ``config`` to override any producer setting).  Waits for every delivery report and raises
    ``KafkaHarnessError`` if any message failed or was not delivered within
    ``flush_timeout`` seconds.  ``partition`` pins all messages to one
    partition; by default the key decides (murmur2-random, like Java).
    """
    from confluent_kafka import KafkaException, Producer  # lazy import

    conf: Dict[str, object] = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 20,
        "batch.size": 1_000_000,
        "batch.num.messages": 100_000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "message.timeout.ms": 120_000,
        "compression.type": "none",
        # Same key -> partition mapping as the Java client.
        "partitioner": "murmur2_random",
    }
    if config:
        conf.update(config)
    producer = Producer(conf)

    failures: list = []  # first few error texts
    counts = {"ok": 0, "failed": 0}

    def on_delivery(err, msg) -> None:  # called from poll()/flush()
        if err is None:
            counts["ok"] += 1
            return
        counts["failed"] += 1
        if len(failures) < 10:
            failures.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    sent = 0
    kwargs = {} if partition is None else {"partition": partition}
    try:
        for key, value in messages:
            while True:
                try:
                    producer.produce(
                        topic, value=value, key=key, on_delivery=on_delivery, **kwargs
                    )
                    break
                except BufferError:
                    # Local queue full: serve delivery reports to make room.
                    producer.poll(0.1)
                except KafkaException as exc:
                    raise KafkaHarnessError(
                        f"produce to {topic} failed: {exc}"
                    ) from exc
            sent += 1
            if sent % 10_000 == 0:
                producer.poll(0)
        remaining = producer.flush(flush_timeout)
    finally:
        # Drop whatever is left (error paths only) and shut the client down
        # now: a lingering idempotent producer would keep reconnecting, e.g.
        # while a test has the broker stopped.
        try:
            producer.purge()
        except Exception:  # noqa: BLE001 - best effort
            pass
        close = getattr(producer, "close", None)  # absent in old releases
        if close is not None:
            close()
        del producer
    if remaining:
        raise KafkaHarnessError(
            f"{remaining} of {sent} messages to {topic} not delivered within {flush_timeout}s"
        )
    if counts["failed"]:
        raise KafkaHarnessError(
            f"{counts['failed']} of {sent} messages to {topic} failed, e.g.: "
            + "; ".join(failures)
        )
    if counts["ok"] != sent:
        raise KafkaHarnessError(
            f"only {counts['ok']} of {sent} deliveries to {topic} confirmed"
        )
    return sent


def high_watermarks(
    bootstrap: str, topic: str, timeout: float = 15.0
) -> Dict[int, int]:
    """Return ``{partition: high watermark}`` for every partition of ``topic``."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition  # lazy import

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "iotpipe-harness-hwm",
            "enable.auto.commit": False,
            "allow.auto.create.topics": False,
        }
    )
    try:
        md = consumer.list_topics(topic, timeout=timeout)
        tmd = md.topics.get(topic)
        if tmd is None or tmd.error is not None:
            raise KafkaHarnessError(
                f"topic {topic} not found: {tmd.error if tmd is not None else 'missing'}"
            )
        result: Dict[int, int] = {}
        for p in sorted(tmd.partitions):
            try:
                _low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=timeout, cached=False
                )
            except KafkaException as exc:
                raise KafkaHarnessError(f"watermarks of {topic}[{p}]: {exc}") from exc
            result[p] = high
        return result
    finally:
        consumer.close()
