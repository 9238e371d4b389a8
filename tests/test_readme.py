"""The README cannot drift: every command it shows is run by a test, every flag it
lists is a flag of that command, and every flag a command has is listed.

A command line in the README is an indented code line starting with `meshlet`,
`.venv/bin/meshlet`, `bash scripts/`, `buildah`, `helm`, `kubectl` or `tilt`. A
synopsis (it has `[...]`) is checked against the command's parser; anything else
must be one of RUNS below, each run here or named with the test that runs it.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from meshlet.cli import build_parser
from tests.procs import free_port, get_json, http_get, running, wait_until

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
COMMAND = re.compile(
    r"^    ((?:\.venv/bin/)?meshlet \S+|bash scripts/\S+|(?:buildah|helm|kubectl|tilt) \S+)(.*)$"
)


def code_lines() -> list[str]:
    return [line for line in README.splitlines() if line.startswith("    ")]


def commands() -> tuple[list[str], list[str]]:
    """(synopses joined with their continuation lines, concrete commands)."""
    synopses, concrete = [], []
    lines = code_lines()
    for i, line in enumerate(lines):
        if not COMMAND.match(line):
            continue
        text = line.strip()
        if "[" in text and text.split()[0].endswith("meshlet"):
            for more in lines[i + 1 :]:
                if not more.strip().startswith("["):
                    break
                text += " " + more.strip()
            synopses.append(text)
        else:
            concrete.append(text.split("  #")[0].strip())
    return synopses, concrete


def flags_of(parser: argparse.ArgumentParser) -> set[str]:
    flags = set()
    for action in parser._actions:
        flags.update(o for o in action.option_strings if o.startswith("--") and o != "--help")
    return flags


def subcommand_flags(name: str) -> set[str]:
    """Its own flags: not the global ones every command takes (listed once)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return flags_of(sub.choices[name]) - GLOBAL_FLAGS


GLOBAL_FLAGS = flags_of(build_parser()) - {"--version"}


def section(command: str) -> str:
    return section_titled(f"## `meshlet {command}`")


def section_titled(title: str) -> str:
    start = README.index(title)
    end = README.find("\n## ", start + 1)
    return README[start:end]


SYNOPSES, CONCRETE = commands()


@pytest.mark.parametrize("synopsis", SYNOPSES)
def test_a_synopsis_lists_exactly_the_commands_flags(synopsis: str) -> None:
    name = synopsis.split()[1]
    shown = set(re.findall(r"--[a-z][a-z-]*", synopsis))
    assert shown == subcommand_flags(name), f"README synopsis of meshlet {name} vs its parser"


@pytest.mark.parametrize("name", ["control-plane", "sidecar", "init", "inject"])
def test_every_flag_in_a_table_is_a_flag(name: str) -> None:
    rows = re.findall(r"^\| `(--[a-z-]+)", section(name), re.M)
    rows += re.findall(r"^\| `--[a-z-]+`, `(--[a-z-]+)`", section(name), re.M)
    assert rows
    unknown = set(rows) - subcommand_flags(name)
    assert not unknown, f"the README's table for meshlet {name} lists {unknown}"


# --- concrete commands ------------------------------------------------------------


def run_control_plane_on_the_demo_manifests(tmp_path: Path) -> None:
    xds, admin = free_port(), free_port()
    argv = [sys.executable, "-m", "meshlet", "control-plane", "--manifests", "examples/demo"]
    argv += [f"--xds-address=127.0.0.1:{xds}", f"--admin-address=127.0.0.1:{admin}"]
    with running(argv, "control plane", tmp_path / "cp.log", cwd=ROOT) as process:
        url = f"http://127.0.0.1:{admin}"

        def ready() -> int:
            process.check_alive()
            return http_get(url + "/readyz")[0]

        wait_until(lambda status: status == 200, 30, "/readyz", observe=ready)
        config = str(get_json(url + "/debug/config"))
        assert "outbound|80||web.default.svc.cluster.local" in config
        assert "outbound|8080||api.default.svc.cluster.local" in config
        # The curl lines that follow it in the README.
        for path in ("/debug/config", "/debug/clients", "/metrics"):
            assert http_get(url + path)[0] == 200


def run_init_dry_run(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "meshlet", "init", "--dry-run", "--dns-server", "10.96.0.10"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    shown = README.split("    meshlet init --dry-run --dns-server 10.96.0.10\n", 1)[1]
    block = shown.split("prints (and changes nothing):\n\n", 1)[1].split("\n\n", 1)[0]
    expected = "\n".join(line[4:] for line in block.splitlines()) + "\n"
    assert result.stdout == expected


def run_by(test_file: str, text: str) -> Callable[[Path], None]:
    """A command another test runs: check that it does."""

    def check(_tmp_path: Path) -> None:
        assert text in (ROOT / test_file).read_text(), f"{test_file} should run {text!r}"

    return check


def _image_and_chart_runs() -> dict[str, Callable[[Path], None]]:
    """The install section's commands: each run, as shown, by the test that holds it."""
    from tests.test_helm_install import README_INSTALL, README_UNINSTALL, README_UPGRADE
    from tests.test_image import README_BUILDS

    install = "tests/test_helm_install.py"
    # Each command, and where the test that holds it runs it (a list's by its index).
    runs = {
        **{c: run_by(install, f"run(README_INSTALL[{i}])") for i, c in enumerate(README_INSTALL)},
        README_UPGRADE: run_by(install, "run(README_UPGRADE)"),
        **{
            c: run_by(install, f"run(README_UNINSTALL[{i}])")
            for i, c in enumerate(README_UNINSTALL)
        },
    }
    # The image test runs every build of its list in one loop.
    builds = run_by("tests/test_image.py", "in README_BUILDS.items()")
    return runs | {command: builds for command in README_BUILDS.values()}


RUNS: dict[str, Callable[[Path], None]] = {
    **_image_and_chart_runs(),
    "tilt ci -- --local": run_by("tests/test_tiltfile.py", 'shlex.split("tilt ci -- --local")'),
    "bash scripts/demo.sh": run_by("tests/test_demo.py", '"scripts/demo.sh"'),
    "bash scripts/test.sh": run_by(".ci/run", "bash scripts/test.sh"),
    ".venv/bin/meshlet control-plane --manifests examples/demo": (
        run_control_plane_on_the_demo_manifests
    ),
    "meshlet init --dry-run --dns-server 10.96.0.10": run_init_dry_run,
}


@pytest.mark.parametrize("command", CONCRETE)
def test_every_command_the_readme_shows_is_run(command: str, tmp_path: Path) -> None:
    assert command in RUNS, f"README shows {command!r}: add how a test runs it to RUNS"
    RUNS[command](tmp_path)


def test_the_global_flags_are_listed_once() -> None:
    rows = set(re.findall(r"^\| `(--[a-z-]+)", section_titled("## Every command"), re.M))
    assert rows == GLOBAL_FLAGS


def test_the_readme_shows_the_commands() -> None:
    assert {s.split()[1] for s in SYNOPSES} == {
        "control-plane",
        "sidecar",
        "init",
        "inject",
        "wait",
        "demo",
        "version",
        "proxy-status",
        "proxy-config",
        "check",
    }
    assert set(RUNS) <= set(CONCRETE)  # no runner for a command the README dropped
