"""`meshlet inject`: read manifests, inject their pod templates, write them to stdout.

All or nothing: a document that does not parse, or a pod that cannot be injected,
is reported with its document number, exit code 2, and nothing is written.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO

import yaml

from meshlet.inject.pod import InjectionError
from meshlet.inject.settings import InjectorSettings, SettingsError, load_settings
from meshlet.inject.workloads import Report, inject_object, namespace_labels

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def inject_text(text: str, name: str, settings: InjectorSettings) -> tuple[str, Report]:
    """The injected manifests (YAML, or JSON for JSON in), and what happened to each."""
    report = Report()
    if name.endswith(".json") or text.lstrip().startswith(("{", "[")):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InjectionError(f"{name}: invalid JSON: {exc.msg} at line {exc.lineno}") from None
        namespaces = namespace_labels([doc])
        out = inject_object(doc, settings, f"{name}: document 1", report, namespaces)
        return json.dumps(out, indent=2) + "\n", report
    loaded: list[object] = []
    try:
        for doc in yaml.load_all(text, Loader=_Loader):
            loaded.append(doc)
    except yaml.YAMLError as exc:
        raise InjectionError(f"{name}: document {len(loaded) + 1}: invalid YAML: {exc}") from None
    # A Namespace anywhere in the stream tells its pods' Pod Security level.
    namespaces = namespace_labels(loaded)
    docs = [
        inject_object(doc, settings, f"{name}: document {number}", report, namespaces)
        for number, doc in enumerate(loaded, start=1)
    ]
    docs = [d for d in docs if d is not None]
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False), report


def run(
    files: Sequence[str],
    settings_path: str | None,
    overrides: dict[str, str | None],
    stdout: IO[str] = sys.stdout,
    stderr: IO[str] = sys.stderr,
) -> int:
    try:
        settings = load_settings(settings_path) if settings_path else InjectorSettings()
        given = {key: value for key, value in overrides.items() if value}
        settings = replace(settings, **given)  # type: ignore[arg-type]  # str fields only
    except SettingsError as exc:
        print(f"meshlet inject: {exc}", file=stderr)
        return 2
    outputs = []
    for path in files or ["-"]:
        name = "<stdin>" if path == "-" else path
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            print(f"meshlet inject: {name}: cannot read: {exc}", file=stderr)
            return 2
        try:
            out, report = inject_text(text, name, settings)
        except InjectionError as exc:
            print(f"meshlet inject: {exc}; nothing written", file=stderr)
            return 2
        outputs.append(out)
        for line in report.lines:
            print(line, file=stderr)
    stdout.write("---\n".join(outputs))
    return 0
