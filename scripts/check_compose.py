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

if "monitoring" not in services.get("prometheus", {}).get("profiles", []):
    problems.append("prometheus belongs in the monitoring profile")
with open(path.replace("docker-compose.yml", "deploy/prometheus.yml"), encoding="utf-8") as handle:
    yaml.safe_load(handle)

if problems:
    sys.exit(f"{path}: " + "; ".join(problems))
print(f"{path}: {len(services)} services, structure ok")
