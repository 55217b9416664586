"""The user's `docker compose up`, checked end to end against a running stack.

Brings up docker-compose.yml with the fixtures override (it-tests/fixtures/docker/), under a
project name and host ports of its own, then checks what a user relies on. Every failure names the
service and the reason. The stack, its volumes included, is removed however the run ends.

Run by scripts/test-compose.sh, which starts the engine and builds the images first.
"""

import csv
import io
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROJECT = os.environ.get("COMPOSE_TEST_PROJECT", f"ecp-test-{os.getpid()}")
FILES = ["-f", "docker-compose.yml", "-f", "it-tests/fixtures/docker/compose.fixtures.yml"]
# The services built from the pipeline image: each must stop with exit 0 on SIGTERM.
PIPELINE_SERVICES = ("generator", "file-bridge", "consumer", "dashboard")
PARTITIONS = 6
CONSUMERS = 3
# The burst written just before a consumer is killed: 20 files of 2,000 events.
BURST_FILES, BURST_ROWS = 20, 2000


class Failure(Exception):
    def __init__(self, service, reason):
        super().__init__(f"{service}: {reason}")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Host ports of this run's own, unless given: two runs on one engine never collide.
ENV = dict(os.environ)
for name in ("KAFKA_PORT", "POSTGRES_PORT", "DASHBOARD_PORT", "CONSOLE_PORT", "PROMETHEUS_PORT"):
    ENV.setdefault(name, str(free_port()))


def say(message):
    print(f"compose test: {message}", flush=True)


def run(args, service, timeout=300, check=True):
    try:
        done = subprocess.run(
            args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise Failure(service, f"`{' '.join(args)}` did not finish within {timeout} s")
    if check and done.returncode != 0:
        raise Failure(service, f"`{' '.join(args)}` exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done


def compose(*args, service="compose", timeout=300, check=True):
    return run(["docker", "compose", "-p", PROJECT, *FILES, *args], service, timeout, check)


def sql(query):
    out = compose(
        "exec", "-T", "postgres", "psql", "-X", "-q", "-t", "-A", "-U", "postgres", "-d", "events", "-c", query,
        service="postgres",
    )
    return out.stdout.strip()


def wait_for(service, what, probe, timeout):
    """Polls `probe` until it returns something true; fails naming the service and what it last saw."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
            last = "not yet"
        except Failure as failure:
            last = str(failure)
        except (OSError, ValueError) as error:
            last = repr(error)
        time.sleep(2)
    raise Failure(service, f"{what} not seen within {timeout} s (last: {last})")


def containers(service, all_states=False):
    args = ["ps", "-q", *(["-a"] if all_states else []), service]
    return compose(*args, service=service).stdout.split()


def inspect(container, template):
    return run(["docker", "inspect", "-f", template, container], "docker").stdout.strip()


def http_json(url, service):
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return json.load(answer)
    except OSError as error:
        raise Failure(service, f"{url} did not answer: {error}")


def stored_ids():
    return set(sql("SELECT event_id FROM ecommerce_events").split())


def status():
    out = compose("exec", "-T", "consumer", "status", "--format", "json", service="consumer", check=False)
    try:
        return out.returncode, json.loads(out.stdout)
    except json.JSONDecodeError:
        raise Failure("consumer", f"`status --format json` printed no JSON (exit {out.returncode}): {out.stderr.strip()}")


def group_members():
    """Each member of the consumer group with how many partitions it holds, asked of the broker."""
    libs = os.environ["KAFKA_LIBS"]
    out = run(
        ["java", "-cp", f"{libs}/*", "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
         "--bootstrap-server", f"127.0.0.1:{ENV['KAFKA_PORT']}", "--describe", "--group", "ecommerce-pg", "--members"],
        "redpanda", timeout=60, check=False,
    ).stdout
    members = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0] == "ecommerce-pg" and fields[-1].isdigit():
            members.append((fields[1], int(fields[-1])))
    return members


def ids_in_archive():
    """The event_ids of every file the bridge archived, read with Python's csv module alone."""
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="compose-archive-"))
    try:
        compose("cp", "file-bridge:/data/archive", str(scratch), service="file-bridge")
        ids, rows, files = set(), 0, 0
        for path in sorted(scratch.rglob("*.csv")):
            files += 1
            with open(path, newline="", encoding="utf-8") as handle:
                for record in csv.DictReader(io.StringIO(handle.read())):
                    ids.add(record["event_id"])
                    rows += 1
        return ids, rows, files
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def check_up():
    say(f"project {PROJECT}, ports kafka {ENV['KAFKA_PORT']} postgres {ENV['POSTGRES_PORT']} dashboard {ENV['DASHBOARD_PORT']}")
    started = time.monotonic()
    compose("up", "-d", "--build", "--wait", "--wait-timeout", "240", timeout=420)
    say(f"up --build --wait: every service healthy in {time.monotonic() - started:.0f} s")


def check_rows_and_dashboard():
    count = wait_for("consumer", "rows in ecommerce_events", lambda: int(sql("SELECT count(*) FROM ecommerce_events")), 120)
    say(f"rows reach PostgreSQL: {count}")
    url = f"http://127.0.0.1:{ENV['DASHBOARD_PORT']}"
    summary = wait_for(
        "dashboard", "a summary with events and the group's lag",
        lambda: (lambda s: s if s["events_total"] > 0 and s["lag_total"] is not None else None)(
            http_json(f"{url}/api/summary", "dashboard")),
        60,
    )
    with urllib.request.urlopen(url + "/", timeout=5) as page:
        if page.status != 200 or b"<html" not in page.read().lower():
            raise Failure("dashboard", f"{url}/ does not serve the page")
    say(f"dashboard answers: events_total {summary['events_total']}, lag_total {summary['lag_total']}")


def check_status():
    code, report = status()
    down = [c for c in report["components"] if c.get("state") != "ready"]
    if code != 0 or down:
        raise Failure("consumer", f"`status` inside the stack exited {code}; not up: {down}")
    say("status inside the stack: " + ", ".join(f"{c['name']} up" for c in report["components"]))


def check_scale():
    compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "180", "--scale", f"consumer={CONSUMERS}", timeout=300)

    def shared():
        members = group_members()
        held = [partitions for _, partitions in members]
        return members if len(members) == CONSUMERS and sum(held) == PARTITIONS and min(held) >= 1 else None

    members = wait_for("consumer", f"{CONSUMERS} group members sharing {PARTITIONS} partitions", shared, 120)
    say(f"--scale consumer={CONSUMERS}: members hold " + ", ".join(str(p) for _, p in members) + " partitions")


def check_kill():
    victim = containers("consumer")[1]
    name = inspect(victim, "{{.Name}}").lstrip("/")
    restarts = int(inspect(victim, "{{.RestartCount}}"))
    # A burst from the stack's own generator, so the kill lands while every consumer is writing.
    before = int(sql("SELECT count(*) FROM ecommerce_events"))
    compose("exec", "-T", "generator", "generator", "--files", str(BURST_FILES), "--events-per-file",
            str(BURST_ROWS), "--interval", "0s", service="generator")
    at = wait_for("consumer", "the burst being written", lambda: (lambda n: n if n >= before + BURST_FILES * BURST_ROWS // 10 else 0)(
        int(sql("SELECT count(*) FROM ecommerce_events"))), 120)
    os.kill(int(inspect(victim, "{{.State.Pid}}")), 9)
    say(f"SIGKILL to {name} mid-stream: {at - before} of a {BURST_FILES * BURST_ROWS}-event burst stored")
    wait_for("consumer", f"{name} restarted by its restart policy",
             lambda: int(inspect(victim, "{{.RestartCount}}")) > restarts, 60)
    wait_for("consumer", f"{name} healthy again",
             lambda: inspect(victim, "{{.State.Health.Status}}") == "healthy", 120)
    say(f"{name} restarted and healthy")


def check_drained_exactly():
    compose("stop", "generator", service="generator")
    code = inspect(containers("generator", all_states=True)[0], "{{.State.ExitCode}}")
    if code != "0":
        raise Failure("generator", f"exited {code} on SIGTERM")

    def drained():
        waiting = compose("exec", "-T", "file-bridge", "find", "/data/input", "-name", "*.csv", service="file-bridge").stdout.split()
        _, report = status()
        return not waiting and report["total_lag"] == 0 and not report["unreconciled_files"]

    wait_for("file-bridge", "every file archived, no lag, every file reconciled", drained, 180)
    ids, rows, files = ids_in_archive()
    stored = stored_ids()
    rejected = int(sql("SELECT count(*) FROM ecommerce_events_rejected"))
    lost, foreign = ids - stored, stored - ids
    if lost or foreign or rejected:
        raise Failure("consumer", f"{len(lost)} events of the files missing (e.g. {sorted(lost)[:3]}), "
                      f"{len(foreign)} stored that no file holds, {rejected} rejected")
    say(f"after the kill: {files} files, {rows} rows, {len(ids)} distinct events written by the generator; "
        f"{len(stored)} stored, 0 lost, 0 doubled (event_id is the key), 0 rejected")
    return stored


def check_sigterm():
    ours = {service: containers(service) for service in PIPELINE_SERVICES if service != "generator"}
    compose("stop", timeout=240)
    for service, ids in ours.items():
        for container in ids:
            code = inspect(container, "{{.State.ExitCode}}")
            if code != "0":
                raise Failure(service, f"{inspect(container, '{{.Name}}')} exited {code} on SIGTERM, not 0")
    say("SIGTERM: generator, file-bridge, " + f"{len(ours['consumer'])} consumers and the dashboard exited 0")


def check_down_up_keeps(stored):
    compose("down", timeout=240)
    compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "240", timeout=420)
    kept = stored_ids()
    if not stored <= kept:
        raise Failure("postgres", f"{len(stored - kept)} of {len(stored)} events gone after down and up")
    say(f"down, then up: all {len(stored)} events still stored ({len(kept)} now)")


def main():
    try:
        check_up()
        check_rows_and_dashboard()
        check_status()
        check_scale()
        check_kill()
        stored = check_drained_exactly()
        check_sigterm()
        check_down_up_keeps(stored)
    except Failure as failure:
        print(f"compose test FAILED: {failure}", file=sys.stderr)
        logs = compose("logs", "--no-color", "--tail", "40", check=False).stdout
        print(logs[-12000:], file=sys.stderr)
        return 1
    finally:
        compose("down", "-v", "--remove-orphans", timeout=240, check=False)
    say("passed")
    return 0


if __name__ == "__main__":
    # A stopped run still removes its stack: SIGTERM unwinds through main's `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
