"""Checks docker-compose.yml where no Docker engine runs: valid YAML and the structure we rely on."""
import sys

import yaml

path = sys.argv[1]
with open(path, encoding="utf-8") as handle:
    compose = yaml.safe_load(handle)

services = compose.get("services", {})
problems = []
for name in ("redpanda", "console", "postgres", "generator", "file-bridge", "consumer", "dashboard", "prometheus"):
    if name not in services:
        problems.append(f"service {name} is missing")
for name in ("redpanda", "postgres", "file-bridge", "consumer"):
    if "healthcheck" not in services.get(name, {}):
        problems.append(f"service {name} has no healthcheck")
consumer = services.get("consumer", {})
# Scaling with --scale consumer=N needs no fixed name and no fixed host port.
if "container_name" in consumer:
    problems.append("consumer has a container_name, so it cannot scale")
if consumer.get("ports"):
    problems.append("consumer publishes host ports, so it cannot scale")
for name in ("file-bridge", "consumer"):
    depends = services.get(name, {}).get("depends_on", {})
    if not isinstance(depends, dict) or any(
        d.get("condition") != "service_healthy" for d in depends.values()
    ):
        problems.append(f"{name} must wait for healthy dependencies")

for name in ("file-bridge", "consumer", "dashboard"):
    test = " ".join(services.get(name, {}).get("healthcheck", {}).get("test", []))
    if "/readyz" not in test:
        problems.append(f"{name}'s healthcheck must ask /readyz, not only open a port")
for name in ("file-bridge", "consumer"):
    grace = str(services.get(name, {}).get("stop_grace_period", "0s"))
    if not grace.endswith("s") or int(grace[:-1] or 0) <= 30:
        problems.append(f"{name} needs a stop_grace_period above its 30 s shutdown timeout")
for name, service in services.items():
    for port in service.get("ports", []):
        if not str(port).startswith("127.0.0.1:"):
            problems.append(f"{name} publishes {port} on every interface")
if not any(str(arg).startswith("--memory=") for arg in services.get("redpanda", {}).get("command", [])):
    problems.append("redpanda's memory is not bounded")

builders = [name for name, service in services.items() if "build" in service]
if builders != ["generator"]:
    problems.append(f"exactly one service builds the pipeline image (four builds of one tag ran at once): {builders}")
for name, service in services.items():
    if service.get("image") == "ecommerce-pipeline:latest" and service.get("pull_policy") != "never":
        problems.append(f"{name} runs the local pipeline image and must never pull it")
if "BRIDGE_METRICS_URL" not in consumer.get("environment", {}):
    problems.append("consumer has no BRIDGE_METRICS_URL, so `status` inside it asks its own loopback for the bridge")
if "KAFKA_BROKERS" not in services.get("dashboard", {}).get("environment", {}):
    problems.append("the dashboard has no KAFKA_BROKERS, so it cannot show the group's lag")

if "monitoring" not in services.get("prometheus", {}).get("profiles", []):
    problems.append("prometheus belongs in the monitoring profile")
with open(path.replace("docker-compose.yml", "deploy/prometheus.yml"), encoding="utf-8") as handle:
    yaml.safe_load(handle)

if problems:
    sys.exit(f"{path}: " + "; ".join(problems))
print(f"{path}: {len(services)} services, structure ok")
