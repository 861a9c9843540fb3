"""Logging: JSON lines through wahookd's own buffer, in order, with structlog's timestamps."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime, timedelta

import structlog

from wahookd.log import add_timestamp

SCRIPT = """
import logging, structlog
from wahookd.log import configure_logging
configure_logging()
log = structlog.get_logger("wahookd.test")
log.info("first", n=1)
logging.getLogger("tornado.general").warning("from stdlib")
for n in range(2000):
    log.info("request", n=n)
log.error("last")
log.info("buffered")
raise SystemExit("wahookd: error: the end")
"""


def test_json_lines_are_buffered_yet_complete_and_in_order() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, timeout=60)
    lines = done.stderr.decode().splitlines()
    assert lines[-1] == "wahookd: error: the end"  # after every earlier line
    assert lines[1] == "tornado.general from stdlib"  # the stdlib line after the first one
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert [r["event"] for r in records[:2]] == ["first", "request"]
    assert [r["n"] for r in records[1:-2]] == list(range(2000))  # nothing lost at exit
    assert [r["event"] for r in records[-2:]] == ["last", "buffered"]
    assert records[-2]["level"] == "error"


def test_timestamps_read_as_structlogs_own() -> None:
    ours = add_timestamp(None, "info", {})["timestamp"]
    theirs = structlog.processors.TimeStamper(fmt="iso", utc=True)(None, "info", {})["timestamp"]
    pattern = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"
    assert re.fullmatch(pattern, ours)
    assert re.fullmatch(pattern, theirs)
    gap = datetime.fromisoformat(theirs) - datetime.fromisoformat(ours)
    assert timedelta(0) <= gap < timedelta(seconds=1)


LINES_SCRIPT = """
import structlog
from wahookd.log import configure_logging, info_line, set_level
configure_logging()
log = structlog.get_logger("wahookd.http")
log.info("request", method="POST", source="shop", status=200, ms=1.5, accepted=1)
info_line(log, "request", {"method": "POST", "source": "shop", "status": 200, "ms": 1.5, "accepted": 1})
set_level("warning")
info_line(log, "request", {"method": "dropped"})
"""


def test_the_access_line_without_structlogs_chain_is_the_chains_line() -> None:
    done = subprocess.run([sys.executable, "-c", LINES_SCRIPT], capture_output=True, timeout=60)
    chain, direct, *rest = done.stderr.decode().splitlines()
    assert rest == []  # below the level: not written
    drop_time = re.compile(r'"timestamp":"[^"]+"')
    assert drop_time.sub("", direct) == drop_time.sub("", chain)  # same keys, same order
    assert json.loads(direct)["level"] == "info"
