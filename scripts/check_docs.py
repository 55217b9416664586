#!/usr/bin/env python3
"""Docs that cannot drift: every file path, test name, metric and binary flag the docs cite in
backticks must exist in the code. Prints each stale reference with the file and line citing it,
and exits non-zero when there is one. Run by scripts/test.sh."""

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]
BINARIES = ["generator", "file-bridge", "consumer", "status", "explain", "quarantine", "aggregates", "retention", "chaos", "bench"]
SUBCOMMANDS = {"quarantine": ["export"], "aggregates": ["check", "rebuild"], "retention": ["apply", "show"]}
# Cargo's and the scripts' own, cited beside ours.
FOREIGN_FLAGS = {"--features", "--locked", "--release", "--bins", "--all-targets", "--build", "--scale", "--profile"}
SOURCE_DIRS = ["consumer", "file-bridge", "generator", "event-model", "it-tests", "operator-tools",
               "pipeline-kafka", "pipeline-store", "process", "telemetry"]


def rust_sources():
    for directory in SOURCE_DIRS:
        yield from (ROOT / directory).rglob("*.rs")


def test_names():
    names = set()
    for path in rust_sources():
        names.update(re.findall(r"\bfn ([a-z0-9_]+)\s*\(", path.read_text(errors="replace")))
    # Tables, views, functions and triggers the migrations create are cited by name too.
    for path in (ROOT / "migrations").glob("*.sql"):
        names.update(re.findall(r"CREATE (?:OR REPLACE )?(?:TABLE|VIEW|FUNCTION|INDEX|TRIGGER) (?:IF NOT EXISTS )?([a-z0-9_]+)",
                                path.read_text(errors="replace")))
    return names


def metric_names():
    """Every metric the services register: prefix + name, with `_total` for counters."""
    names = set()
    for path in rust_sources():
        text = path.read_text(errors="replace")
        prefix = re.search(r'with_prefix\("([a-z_]+)"\)', text)
        if not prefix:
            continue
        for name in re.findall(r'^\s*"([a-z_]+)",\s*$', text, re.MULTILINE):
            names.add(f"{prefix.group(1)}_{name}")
            names.add(f"{prefix.group(1)}_{name}_total")
    return names


def flags():
    found = set()
    for binary in BINARIES:
        path = ROOT / "target" / "debug" / binary
        if not path.exists():
            sys.exit(f"check_docs: {path} is missing; run `cargo build --bins` first")
        for command in [[], *([sub] for sub in SUBCOMMANDS.get(binary, []))]:
            help_text = subprocess.run([str(path), *command, "--help"], capture_output=True, text=True).stdout
            found.update(re.findall(r"--[a-z][a-z0-9-]*", help_text))
    return found


def main():
    tests, metrics, known_flags = test_names(), metric_names(), flags()
    stale = []
    for doc in DOCS:
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            for quoted in re.findall(r"`([^`]+)`", line):
                where = f"{doc.relative_to(ROOT)}:{number}"
                for word in quoted.split():
                    word = word.strip(",;:()")
                    if re.fullmatch(r"[a-z0-9_]+(_[a-z0-9]+){4,}", word) and not word.startswith("pipeline_"):
                        if word not in tests:
                            stale.append(f"{where}: test, function or table `{word}` not found")
                    elif re.fullmatch(r"pipeline_[a-z_]+", word):
                        if word not in metrics:
                            stale.append(f"{where}: metric `{word}` not registered")
                    elif re.fullmatch(r"--[a-z][a-z0-9-]+", word) and quoted.split()[0] in BINARIES + [word]:
                        if word not in known_flags and word not in FOREIGN_FLAGS:
                            stale.append(f"{where}: flag `{word}` in no binary's --help")
                    elif re.fullmatch(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.{},-]+)+\.(rs|sh|py|md|sql|yml|yaml|xml|properties)", word):
                        if "{" in word:
                            continue
                        if not (ROOT / word).exists() and not any(any((ROOT / d).rglob(word)) for d in SOURCE_DIRS):
                            stale.append(f"{where}: path `{word}` does not exist")
    for reference in stale:
        print(reference)
    if stale:
        sys.exit(f"check_docs: {len(stale)} stale reference(s) in the docs")
    print(f"check_docs: {len(DOCS)} documents, every cited path, test, metric and flag exists")


main()
