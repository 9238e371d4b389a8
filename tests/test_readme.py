"""The README and docs/ cannot drift: every command they show is run by a test, every
`meshlet` command they name parses, every flag they list is a flag of that command,
every flag a command has is listed, and every relative link points at a file (and a
heading) that exists.

A command line is an indented code line starting with `meshlet`, `.venv/bin/meshlet`,
`bash scripts/`, `buildah`, `helm`, `kubectl`, `tilt`, `kind` or `ctr` (a line ending
in a backslash goes on on the next); a `meshlet` command in running text is one in
backticks. A synopsis (it has `[...]`) is checked against the
command's parser; anything else must be one of RUNS below, each run here or named with
the test that runs it, or one of SHOWN_NOT_RUN, with why no test here can run it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from meshlet.cli import build_parser
from tests.layers import FAST_TIER
from tests.procs import free_port, get_json, http_get, running, wait_until

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
TEXTS = {page.relative_to(ROOT).as_posix(): page.read_text() for page in PAGES}
COMMAND = re.compile(
    r"^    ((?:\.venv/bin/)?meshlet \S+|bash scripts/\S+"
    r"|(?:buildah|helm|kubectl|tilt|kind|ctr) \S+)(.*)$"
)
# `meshlet ...` in backticks, in running text.
INLINE = re.compile(r"`((?:\.venv/bin/)?meshlet [^`]+)`")


def code_lines(text: str) -> list[str]:
    """Indented code lines, a line ending in a backslash joined with the next."""
    lines: list[str] = []
    joining = False
    for line in text.splitlines():
        if joining:
            lines[-1] = lines[-1][:-1].rstrip() + " " + line.strip()
        elif line.startswith("    "):
            lines.append(line)
        else:
            continue
        joining = lines[-1].endswith("\\")
    return lines


def commands() -> tuple[list[str], list[str]]:
    """(synopses joined with their continuation lines, concrete commands) of every page."""
    synopses, concrete = [], []
    for text in TEXTS.values():
        lines = code_lines(text)
        for i, line in enumerate(lines):
            if not COMMAND.match(line):
                continue
            shown = line.strip()
            if "[" in shown and shown.split()[0].endswith("meshlet"):
                for more in lines[i + 1 :]:
                    if not more.strip().startswith("["):
                        break
                    shown += " " + more.strip()
                synopses.append(shown)
            else:
                concrete.append(shown.split("  #")[0].strip())
    return synopses, concrete


def flags_of(parser: argparse.ArgumentParser) -> set[str]:
    flags: set[str] = set()
    for action in parser._actions:
        flags.update(o for o in action.option_strings if o.startswith("--") and o != "--help")
    return flags


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def subcommand_flags(name: str) -> set[str]:
    """Its own flags: not the global ones every command takes (listed once)."""
    return flags_of(subcommands()[name]) - GLOBAL_FLAGS


GLOBAL_FLAGS = flags_of(build_parser()) - {"--version"}


def page_with(needle: str) -> str:
    found = [text for text in TEXTS.values() if needle in text]
    assert len(found) == 1, f"{needle!r} should be on exactly one page, is on {len(found)}"
    return found[0]


def section(command: str) -> str:
    return section_titled(f"## `meshlet {command}`")


def section_titled(title: str) -> str:
    text = page_with(f"\n{title}\n")
    start = text.index(f"\n{title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


SYNOPSES, CONCRETE = commands()


@pytest.mark.parametrize("synopsis", SYNOPSES)
def test_a_synopsis_lists_exactly_the_commands_flags(synopsis: str) -> None:
    name = synopsis.split()[1]
    shown = set(re.findall(r"--[a-z][a-z-]*", synopsis))
    assert shown == subcommand_flags(name), f"the docs' synopsis of meshlet {name} vs its parser"


@pytest.mark.parametrize("name", ["control-plane", "sidecar", "init", "inject"])
def test_every_flag_in_a_table_is_a_flag(name: str) -> None:
    rows = re.findall(r"^\| `(--[a-z-]+)", section(name), re.M)
    rows += re.findall(r"^\| `--[a-z-]+`, `(--[a-z-]+)`", section(name), re.M)
    assert rows
    unknown = set(rows) - subcommand_flags(name)
    assert not unknown, f"the docs' table for meshlet {name} lists {unknown}"


# --- every meshlet command named parses -------------------------------------------


def parse_error(shown: str) -> str | None:
    """Why meshlet's own parser refuses this command line (None: it parses)."""
    line = re.split(r"\s(?:\||&&|;|>)\s", shown)[0]
    argv = shlex.split(line)[1:]
    if argv[0] not in subcommands():
        return f"no command {argv[0]!r}"
    if len(argv) == 1:  # the command named, in running text
        return None
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            build_parser().parse_args(argv)
    except SystemExit:
        return errors.getvalue().strip().splitlines()[-1]
    return None


def is_meshlet(command: str) -> bool:
    return command.split()[0].endswith("meshlet")


def named_commands() -> list[str]:
    inline = [m.group(1) for text in TEXTS.values() for m in INLINE.finditer(text)]
    # `meshlet sidecar: cannot listen ...` is what a command prints, not a command.
    inline = [c for c in inline if not c.split()[1].endswith(":")]
    return sorted({c for c in CONCRETE if is_meshlet(c)} | set(inline))


@pytest.mark.parametrize("shown", named_commands())
def test_every_meshlet_command_named_parses(shown: str) -> None:
    assert parse_error(shown) is None, f"{shown!r}: {parse_error(shown)}"


def test_a_command_that_does_not_parse_is_caught() -> None:
    assert parse_error("meshlet proxy-config endpoints --admin 10.0.0.1:15000") is None
    assert parse_error("meshlet proxy-config endpoints --admin ADDR") is not None  # not HOST:PORT
    assert parse_error("meshlet sidecar --no-such-flag") is not None
    assert parse_error("meshlet proxy-config --admin 10.0.0.1:15000") is not None  # no part
    assert parse_error("meshlet no-such-command --flag") is not None
    assert "meshlet init --dry-run --dns-server 10.96.0.10" in named_commands()


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
        # The curl lines that follow it in the docs.
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
    command = "    meshlet init --dry-run --dns-server 10.96.0.10\n"
    shown = page_with(command).split(command, 1)[1]
    block = shown.split("prints (and changes nothing):\n\n", 1)[1].split("\n\n", 1)[0]
    expected = "\n".join(line[4:] for line in block.splitlines()) + "\n"
    assert result.stdout == expected


def run_by(test_file: str, text: str) -> Callable[[Path], None]:
    """A command another test runs (or a script holds): check that it does."""

    def check(_tmp_path: Path) -> None:
        assert text in (ROOT / test_file).read_text(), f"{test_file} should run {text!r}"

    return check


def _image_and_chart_runs() -> dict[str, Callable[[Path], None]]:
    """The install's commands: each run, as shown, by the test that holds it."""
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
    "bash scripts/test.sh --fast": run_by("scripts/test.sh", f'pytest -m "{FAST_TIER}"'),
    ".venv/bin/meshlet control-plane --manifests examples/demo": (
        run_control_plane_on_the_demo_manifests
    ),
    "meshlet init --dry-run --dns-server 10.96.0.10": run_init_dry_run,
}

_LOAD = "loading images into the nodes: the real-node tests load theirs into their own containerd"
# Shown, and run by no test here, with why.
SHOWN_NOT_RUN: dict[str, str] = {
    "buildah push ghcr.io/meshlet/meshlet:0.1.0"
    " docker-archive:/tmp/meshlet.tar:ghcr.io/meshlet/meshlet:0.1.0": _LOAD,
    "buildah push ghcr.io/meshlet/meshlet-control-plane:0.1.0"
    " docker-archive:/tmp/meshlet-control-plane.tar:ghcr.io/meshlet/meshlet-control-plane:0.1.0": (
        _LOAD
    ),
    "kind load image-archive /tmp/meshlet.tar --name meshlet": "no kind cluster here",
    "kind load image-archive /tmp/meshlet-control-plane.tar --name meshlet": "no kind cluster here",
    "ctr -n k8s.io images import /tmp/meshlet.tar": _LOAD,
    "ctr -n k8s.io images import /tmp/meshlet-control-plane.tar": _LOAD,
}


@pytest.mark.parametrize("command", sorted(set(CONCRETE)))
def test_every_command_the_docs_show_is_run(command: str, tmp_path: Path) -> None:
    if command in SHOWN_NOT_RUN:
        return
    assert command in RUNS, f"the docs show {command!r}: add how a test runs it to RUNS"
    RUNS[command](tmp_path)


def test_every_meshlet_command_shown_is_run_here() -> None:
    assert not [c for c in SHOWN_NOT_RUN if is_meshlet(c)]


def test_the_global_flags_are_listed_once() -> None:
    rows = set(re.findall(r"^\| `(--[a-z-]+)", section_titled("## Flags of every command"), re.M))
    assert rows == GLOBAL_FLAGS


def test_the_docs_show_every_command() -> None:
    assert {s.split()[1] for s in SYNOPSES} == set(subcommands())
    assert len(SYNOPSES) == len(subcommands()), "one synopsis per command"
    # No runner for a command the docs dropped.
    assert set(RUNS) | set(SHOWN_NOT_RUN) <= set(CONCRETE)


# --- links -------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text without code: indented lines and inline code spans."""
    lines = [line for line in text.splitlines() if not line.startswith("    ")]
    return re.sub(r"`[^`]*`", "", "\n".join(lines))


def anchors(text: str) -> set[str]:
    """GitHub's anchors for the headings of a page (a repeated one gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for line in text.splitlines():
        heading = re.match(r"^#{1,6} (.+)$", line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links() -> list[tuple[str, str]]:
    return [
        (page, target)
        for page, text in TEXTS.items()
        for target in LINK.findall(prose(text))
        if not re.match(r"^[a-z]+:", target)  # https:, mailto:
    ]


@pytest.mark.parametrize(("page", "target"), links())
def test_every_relative_link_points_at_what_exists(page: str, target: str) -> None:
    path, _, anchor = target.partition("#")
    file = (ROOT / page).parent / path if path else ROOT / page
    assert file.exists(), f"{page} links to {target}: no {file.relative_to(ROOT)}"
    if anchor:
        assert file.suffix == ".md", f"{page} links to an anchor in {path}"
        assert anchor in anchors(file.read_text()), f"{page} links to {target}: no heading"


def test_the_link_check_sees_links_and_headings() -> None:
    assert ("README.md", "docs/testing.md") in links()
    assert "meshlet-control-plane" in anchors("## `meshlet control-plane`\n")
    assert "the-charts-values" in anchors("## The chart's values\n")
    assert anchors("## A\n## A\n") == {"a", "a-1"}
    assert [page for page in TEXTS if page.startswith("docs/")], "docs/ has pages"
