"""The manifest source against a folder a hostile user fills: what is no regular file,
symlink loops, files too big, floods of broken documents, big files parsed in a child.

Each hostile file is a problem of its own and every other file goes on being read.
The files that hang or exhaust a careless reader are loaded in a child process with
a memory limit and a timeout: a regression fails the test instead of hanging the
run or taking the machine's memory.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshlet.controlplane import problems
from meshlet.controlplane.registry import Registry
from meshlet.controlplane.sources.manifest_files import (
    MAX_FOLDERS,
    Unreadable,
    read_bounded,
    scan,
)
from meshlet.controlplane.sources.manifest_parse import parse_manifest
from meshlet.controlplane.sources.manifest_yaml import reused_nodes
from meshlet.controlplane.sources.manifests import IN_PROCESS_BYTES, ManifestSource
from meshlet.controlplane.sources.parse_worker import ParserProcess
from tests.procs import without_root_powers
from tests.test_manifests import Loaded, addresses, keys, service_yaml, slice_yaml

# Loads PATH once and prints the services and problems; bounded in memory, so reading
# /dev/zero to its end fails here instead of taking the machine's memory.
_LOAD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from meshlet.controlplane.registry import Registry
from meshlet.controlplane.sources.manifests import ManifestSource
registry = Registry()
ManifestSource(sys.argv[1], registry).load()
result = registry.result()
print(json.dumps({"services": [s.key for s in result.mesh.services], "errors": result.errors}))
"""


def run_child(script: str, *args: object, prefix: Sequence[str] = ()) -> Any:
    """What `script` printed as JSON, run with `args` in a child process (under `prefix`);
    a hang is a failure (the child is then killed by its PID), as is a failed child."""
    done = subprocess.run(
        [*prefix, sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def load_in_child(path: Path) -> dict[str, Any]:
    """One load of PATH in a child process, bounded in memory (see _LOAD)."""
    result: dict[str, Any] = run_child(_LOAD, path)
    return result


def make_fifo(path: Path) -> None:
    os.mkfifo(path)


def make_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))  # the socket file stays after the socket is closed


def link_to_dev_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def link_in_a_loop(path: Path) -> None:
    other = path.with_name("other.yaml")
    path.symlink_to(other.name)
    other.symlink_to(path.name)


@pytest.mark.parametrize(
    ("make", "problems_of"),
    [
        pytest.param(
            make_fifo,
            {"x.yaml": "not a regular file (a FIFO): only regular files are read"},
            id="fifo",
        ),
        pytest.param(
            link_to_dev_zero,
            {"x.yaml": "not a regular file (a character device): only regular files are read"},
            id="dev-zero",
        ),
        pytest.param(
            make_socket,
            {"x.yaml": "not a regular file (a socket): only regular files are read"},
            id="socket",
        ),
        pytest.param(
            link_in_a_loop,
            {
                "other.yaml": "cannot read: Too many levels of symbolic links",
                "x.yaml": "cannot read: Too many levels of symbolic links",
            },
            id="symlink-loop",
        ),
    ],
)
def test_what_is_no_regular_file_is_a_problem_of_its_own(
    tmp_path: Path, make: Any, problems_of: dict[str, str]
) -> None:
    (tmp_path / "web.yaml").write_text(service_yaml("web", "10.96.0.1"))
    make(tmp_path / "x.yaml")
    result = load_in_child(tmp_path)
    assert result["services"] == ["shop/web"]
    assert result["errors"] == [f"{tmp_path / name}: {why}" for name, why in problems_of.items()]


def test_a_symlink_loop_never_stops_the_other_updates(tmp_path: Path) -> None:
    web = tmp_path / "web.yaml"
    web.write_text(service_yaml("web", "10.96.0.1"))
    source = Loaded(tmp_path)
    source.load()
    link_in_a_loop(tmp_path / "loop.yaml")
    (tmp_path / "api.yaml").write_text(service_yaml("api", "10.96.0.2"))
    web.write_text(service_yaml("web", "10.96.0.1", port=81))
    result = source.load()
    assert keys(result.mesh) == ["shop/api", "shop/web"]
    assert result.mesh.services[1].ports[0].port == 81
    assert len(result.errors) == 2
    # Undone: its problems go.
    (tmp_path / "loop.yaml").unlink()
    (tmp_path / "other.yaml").unlink()
    assert source.load().errors == ()


def test_a_good_file_turned_into_a_fifo_keeps_its_last_objects(tmp_path: Path) -> None:
    path = tmp_path / "web.yaml"
    path.write_text(service_yaml("web", "10.96.0.1"))
    source = Loaded(tmp_path)
    good = source.load()
    path.unlink()
    os.mkfifo(path)
    result = source.load()
    assert result.mesh == good.mesh
    assert result.errors == (f"{path}: not a regular file (a FIFO): only regular files are read",)


# Loads PATH, makes FOLDER unlistable, loads again, and prints what the second load gave.
_LOAD_WITHOUT_FOLDER = """
import json, os, sys
from meshlet.controlplane.registry import Registry
from meshlet.controlplane.sources.manifests import ManifestSource
root, folder = sys.argv[1], sys.argv[2]
registry = Registry()
source = ManifestSource(root, registry)
source.load()
os.chmod(folder, 0)
try:
    source.load()
finally:
    os.chmod(folder, 0o755)
result = registry.result()
print(json.dumps({"services": [s.key for s in result.mesh.services], "errors": result.errors}))
"""


def test_a_folder_that_cannot_be_listed_keeps_its_files_objects(tmp_path: Path) -> None:
    team = tmp_path / "team"
    team.mkdir()
    (team / "api.yaml").write_text(service_yaml("api", "10.96.0.2"))
    (tmp_path / "web.yaml").write_text(service_yaml("web", "10.96.0.1"))
    result = run_child(_LOAD_WITHOUT_FOLDER, tmp_path, team, prefix=without_root_powers())
    assert result["services"] == ["shop/api", "shop/web"]
    assert result["errors"] == [f"{team}: cannot read: Permission denied"]


# --- Size ----------------------------------------------------------------------


def test_a_file_over_the_limit_is_a_problem_and_its_last_objects_stay(tmp_path: Path) -> None:
    path = tmp_path / "web.yaml"
    path.write_text(service_yaml("web", "10.96.0.1"))
    registry = Registry()
    source = ManifestSource(tmp_path, registry, max_bytes=1000)
    source.load()
    good = registry.result()
    assert keys(good.mesh) == ["shop/web"]

    (tmp_path / "api.yaml").write_text(service_yaml("api", "10.96.0.2"))
    path.write_text(service_yaml("web", "10.96.0.9") + "# padding\n" * 100)
    source.load()
    result = registry.result()
    assert [s.cluster_ips for s in result.mesh.services] == [("10.96.0.2",), ("10.96.0.1",)]
    size = path.stat().st_size
    assert result.errors == (
        f"{path}: {size:,} bytes: over --max-manifest-bytes (1,000), so not read;"
        " its last good objects stay",
    )
    path.write_text(service_yaml("web", "10.96.0.9"))
    source.load()
    assert registry.result().errors == ()


def test_a_file_holding_more_than_its_stat_says_is_read_only_to_the_limit() -> None:
    # /proc's files say 0 bytes and hold more, as a file growing since its stat would.
    maps = "/proc/self/maps"
    assert os.stat(maps).st_size == 0
    with pytest.raises(Unreadable, match=r"^more than 1,000 bytes: over --max-manifest-bytes"):
        read_bounded(maps, os.stat(maps), 1000)


# --- Floods of problems ----------------------------------------------------------


def test_100000_broken_documents_are_five_problems_and_a_count(tmp_path: Path) -> None:
    path = tmp_path / "junk.yaml"
    path.write_text("--- nope\n" * 100_000)
    (tmp_path / "web.yaml").write_text(service_yaml("web", "10.96.0.1"))
    result = Loaded(tmp_path).load()
    assert keys(result.mesh) == ["shop/web"]
    assert result.errors == (
        *(
            f"{path}: document {n}: expected a Kubernetes object (a mapping), got a string"
            for n in range(1, problems.PER_FILE + 1)
        ),
        f"{path}: 99,995 more problems in this file (the first 5 are listed)",
    )


def test_thousands_of_invalid_services_in_one_file_are_a_few_problems(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "".join(
            f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{n}}}\nspec: {{type: Bad}}\n"
            for n in range(20_000)
        )
    )
    errors = Loaded(tmp_path).load().errors
    assert len(errors) == problems.PER_FILE + 1
    assert errors[0] == (
        f'{path}: document 1 (Service default/s0): spec.type "Bad" is not one of'
        " ClusterIP, NodePort, LoadBalancer, ExternalName"
    )
    assert errors[-1] == f"{path}: 19,995 more problems in this file (the first 5 are listed)"


def test_problems_of_many_files_are_bounded_in_all(tmp_path: Path) -> None:
    for n in range(300):
        (tmp_path / f"f{n:03}.yaml").write_text("nope\n")
    errors = Loaded(tmp_path).load().errors
    assert len(errors) == problems.IN_ALL + 1
    assert errors[-1] == "and 200 more lines of problems, not listed (300 in all)"


# --- Big files, parsed in a child process -----------------------------------------


def big_service(name: str, ip: str) -> str:
    """A valid Service over IN_PROCESS_BYTES: its bulk in annotations."""
    notes = "".join(f"    example.com/note-{n}: filler\n" for n in range(IN_PROCESS_BYTES // 20))
    return service_yaml(name, ip).replace(
        "  namespace: shop\n", "  namespace: shop\n  annotations:\n" + notes, 1
    )


def test_a_big_file_parses_in_a_child_as_it_would_here(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(big_service("big", "10.96.0.4"))
    data = path.read_bytes()
    assert len(data) > IN_PROCESS_BYTES
    with ParserProcess() as parser:
        assert parser.parse(data, str(path)) == parse_manifest(data, str(path))
        pid = parser.pid
    assert pid is not None and not Path(f"/proc/{pid}").exists()
    assert keys(Loaded(tmp_path).load().mesh) == ["shop/big"]


def test_a_parser_process_that_dies_is_a_problem_of_its_file() -> None:
    data = big_service("big", "10.96.0.4").encode()
    with ParserProcess() as parser:
        parser.parse(b"", "warm.yaml")  # started, and waiting for the next file
        pid = parser.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # so the next file cannot be parsed before the kill
        results: list[Any] = []
        parsing = threading.Thread(target=lambda: results.append(parser.parse(data, "big.yaml")))
        parsing.start()
        try:
            os.kill(pid, signal.SIGKILL)
        finally:
            parsing.join()
    (parsed,) = results
    assert not parsed.complete
    assert [str(e) for e in parsed.errors] == [
        "big.yaml: not parsed: the parser process was killed by signal 9 (out of memory?)"
    ]


# --- Values PyYAML cannot build ---------------------------------------------------

BAD_DATE = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: dates}\ndata: {day: 2024-02-30}\n"


def with_a_bad_date(big: bool) -> str:
    """A file whose second document holds a date that does not exist; over
    IN_PROCESS_BYTES (parsed in the child) when `big`."""
    first = big_service("big", "10.96.0.4") if big else service_yaml("z", "10.96.0.4")
    return first + "---\n" + BAD_DATE


BAD_DATE_PROBLEM = (
    "{path}: document 2: invalid YAML: a value that cannot be read (day is out of range for month)"
)
sizes = pytest.mark.parametrize("big", [False, True], ids=["in-process", "in-the-child"])


@pytest.mark.parametrize(
    "value", ["2024-02-30", '!!float "x"', "!!int 12x"], ids=["date", "float", "int"]
)
def test_a_value_yaml_cannot_build_is_a_problem_not_an_exception(value: str) -> None:
    parsed = parse_manifest(f"a: {value}\n".encode(), "x.yaml")
    assert not parsed.complete
    [error] = parsed.errors
    assert str(error).startswith("x.yaml: document 1: invalid YAML: a value that cannot be read (")


@sizes
def test_a_bad_value_at_start_is_a_problem_of_its_file(tmp_path: Path, big: bool) -> None:
    (tmp_path / "a.yaml").write_text(service_yaml("a", "10.96.0.1"))
    bad = tmp_path / "z.yaml"
    bad.write_text(with_a_bad_date(big))
    loaded = Loaded(tmp_path)
    result = loaded.load()
    assert keys(result.mesh) == ["shop/a"]
    assert result.errors == (BAD_DATE_PROBLEM.format(path=bad),)
    bad.write_text(with_a_bad_date(big).replace("2024-02-30", "2024-02-29"))
    fixed = loaded.load()
    assert fixed.errors == ()
    assert keys(fixed.mesh) == ["shop/a", "shop/big" if big else "shop/z"]


@sizes
def test_a_bad_value_on_reload_loses_no_other_change(tmp_path: Path, big: bool) -> None:
    a = tmp_path / "a.yaml"
    a.write_text(service_yaml("a", "10.96.0.1"))
    loaded = Loaded(tmp_path)
    loaded.load()
    # One pass: a.yaml changes, and z.yaml (read after it) cannot be read whole.
    a.write_text(service_yaml("a", "10.96.0.1", port=81))
    bad = tmp_path / "z.yaml"
    bad.write_text(with_a_bad_date(big))
    result = loaded.load()
    assert result.mesh.services[0].ports[0].port == 81
    assert result.errors == (BAD_DATE_PROBLEM.format(path=bad),)
    bad.unlink()
    gone = loaded.load()
    assert gone.errors == ()
    assert gone.mesh.services[0].ports[0].port == 81


def test_a_big_bad_value_is_the_childs_answer_not_its_crash(tmp_path: Path) -> None:
    data = with_a_bad_date(big=True).encode()
    assert len(data) > IN_PROCESS_BYTES
    with ParserProcess() as parser:
        parsed = parser.parse(data, "z.yaml")
        here = parse_manifest(data, "z.yaml")
        assert (parsed.objects, parsed.complete) == (here.objects, False)
        assert [str(e) for e in parsed.errors] == [str(e) for e in here.errors]
        # The same child goes on parsing the next file.
        assert parser.parse(big_service("big", "10.96.0.4").encode(), "big.yaml").complete


# Reloads PATH with no file descriptors to spare for the parser's pipes, then watches
# it with them and no file changing, and prints what the reload and the watch gave.
_WATCH_WITHOUT_FDS = """
import asyncio, json, os, resource, sys
from meshlet.controlplane.registry import Registry
from meshlet.controlplane.sources.manifests import ManifestSource

def outcome(registry):
    result = registry.result()
    return {"services": [s.key for s in result.mesh.services], "errors": result.errors,
            "synced": registry.is_synced}

async def main():
    registry = Registry()
    source = ManifestSource(sys.argv[1], registry)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    while (fd := os.open(os.devnull, os.O_RDONLY)) <= highest:
        pass
    os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 4, hard))
    try:
        await source.reload()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    first = outcome(registry)
    tried = asyncio.Event()
    async def on_change():
        await source.reload()
        tried.set()
    watch = asyncio.create_task(source.watch(on_change, use_inotify=False, poll_interval=0.05,
                                             rescan_interval=0.2))
    await asyncio.wait_for(tried.wait(), 30)
    watch.cancel()
    print(json.dumps([first, outcome(registry)]))

asyncio.run(main())
"""


def test_a_file_that_failed_to_be_read_is_tried_again_unchanged(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(service_yaml("a", "10.96.0.1"))
    big = tmp_path / "big.yaml"
    big.write_text(big_service("big", "10.96.0.4"))
    failed, retried = run_child(_WATCH_WITHOUT_FDS, tmp_path)
    assert failed == {
        "services": ["shop/a"],
        "errors": [f"{big}: cannot read: Too many open files"],
        "synced": False,
    }
    assert retried == {"services": ["shop/a", "shop/big"], "errors": [], "synced": True}


# --- At start: nothing is served before every file was read whole ------------------


def write_bad_yaml(path: Path) -> None:
    path.write_text("kind: Service\n  bad: [indent\n")


def write_too_big(path: Path) -> None:
    path.write_text(service_yaml("x", "10.96.0.9") + "# padding\n" * 1000)


@pytest.mark.parametrize(
    "make",
    [write_bad_yaml, write_too_big, make_fifo, link_in_a_loop, lambda p: p.write_text(BAD_DATE)],
    ids=["bad-yaml", "over-the-limit", "fifo", "symlink-loop", "bad-date"],
)
def test_a_file_not_read_whole_at_start_holds_back_synced(tmp_path: Path, make: Any) -> None:
    (tmp_path / "web.yaml").write_text(service_yaml("web", "10.96.0.1"))
    bad = tmp_path / "x.yaml"
    make(bad)
    registry = Registry()
    source = ManifestSource(tmp_path, registry, max_bytes=4096)
    source.load()
    # Its objects are not known: serving the rest would tell clients they are gone.
    assert not registry.is_synced
    assert registry.result().errors
    source.load()  # still so
    assert not registry.is_synced
    for path in (bad, tmp_path / "other.yaml"):
        path.unlink(missing_ok=True)
    bad.write_text(service_yaml("x", "10.96.0.9"))
    source.load()
    assert registry.is_synced
    result = registry.result()
    assert (keys(result.mesh), result.errors) == (["shop/web", "shop/x"], ())


def test_wrong_objects_at_start_are_served_around(tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text(
        service_yaml("web", "10.96.0.1") + "---\n" + service_yaml("bad", "10.96.0.2", port=70000)
    )
    (tmp_path / "api.yaml").write_text(service_yaml("api", "10.96.0.1"))  # web's ClusterIP
    registry = Registry()
    ManifestSource(tmp_path, registry).load()
    assert registry.is_synced
    result = registry.result()
    assert keys(result.mesh) == ["shop/api"]  # api comes first by name: web is left out
    assert len(result.errors) == 2


def test_a_file_failing_after_the_first_sync_keeps_its_objects(tmp_path: Path) -> None:
    path = tmp_path / "web.yaml"
    path.write_text(service_yaml("web", "10.96.0.1"))
    registry = Registry()
    source = ManifestSource(tmp_path, registry)
    source.load()
    assert registry.is_synced
    write_bad_yaml(path)
    source.load()
    assert registry.is_synced
    assert keys(registry.result().mesh) == ["shop/web"]


# Loads ROOT with FOLDER (ROOT itself, or a folder in it) unlistable, then listable,
# and prints what each load gave.
_SYNC_WITHOUT_FOLDER = """
import json, os, sys
from meshlet.controlplane.registry import Registry
from meshlet.controlplane.sources.manifests import ManifestSource
root, folder = sys.argv[1], sys.argv[2]
registry = Registry()
source = ManifestSource(root, registry)
loads = []
for mode in (0, 0o755):
    os.chmod(folder, mode)
    source.load()
    result = registry.result()
    loads.append({"synced": registry.is_synced, "errors": result.errors,
                  "services": [s.key for s in result.mesh.services]})
print(json.dumps(loads))
"""


@pytest.mark.parametrize("unlisted", [".", "team"], ids=["the-root", "a-folder-in-it"])
def test_a_folder_that_cannot_be_listed_at_start_holds_back_synced(
    tmp_path: Path, unlisted: str
) -> None:
    root = tmp_path / "manifests"
    (root / "team").mkdir(parents=True)
    (root / "team" / "api.yaml").write_text(service_yaml("api", "10.96.0.2"))
    (root / "web.yaml").write_text(service_yaml("web", "10.96.0.1"))
    folder = (root / unlisted).resolve()
    unlistable, listable = run_child(
        _SYNC_WITHOUT_FOLDER, root, folder, prefix=without_root_powers()
    )
    assert unlistable["synced"] is False
    assert unlistable["errors"] == [f"{folder}: cannot read: Permission denied"]
    assert listable == {"synced": True, "errors": [], "services": ["shop/api", "shop/web"]}


# --- YAML aliases -------------------------------------------------------------------

ALIAS_PROBLEM = (
    "{path}: document 1: YAML aliases repeat more than 100,000 nodes in this file, too many"
    " to decode: anchors re-used that often are refused"
)


def aliased_slice(addresses: int, endpoints: int, padding: int = 0) -> str:
    """An EndpointSlice whose every endpoint is an alias of one list of addresses: a
    few bytes a line that stand for addresses x endpoints values."""
    listed = ", ".join(f"10.1.{n // 250}.{n % 250 + 1}" for n in range(addresses))
    return (
        slice_yaml("web").replace("endpoints:\n", f"x-addresses: &all [{listed}]\nendpoints:\n")
        + "- addresses: *all\n" * endpoints
        + "# padding\n" * padding
    )


def test_how_much_an_alias_stands_for_is_counted_whole() -> None:
    root = yaml.compose("a: &a [1, 2, [3]]\nb: *a\nc: {d: *a}\n")
    assert root is not None
    # Each alias stands for the list, its two numbers, the inner list and its number.
    assert reused_nodes(root) == 2 * 5
    assert reused_nodes(yaml.compose("a: &a {b: 1}\nc: [*a, *a, *a]\n")) == 3 * 3


@pytest.mark.parametrize("big", [False, True], ids=["in-process", "in-the-child"])
def test_an_anchor_reused_too_often_is_refused_before_it_is_decoded(
    tmp_path: Path, big: bool
) -> None:
    # 1,000 endpoints, each the same 1,000 addresses: 30 KB for a million values.
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(aliased_slice(1000, 1000, padding=4000 if big else 0))
    assert (bomb.stat().st_size > IN_PROCESS_BYTES) is big
    (tmp_path / "web.yaml").write_text(service_yaml("web", "10.96.0.1"))
    registry = Registry()
    ManifestSource(tmp_path, registry).load()
    result = registry.result()
    assert result.errors == (ALIAS_PROBLEM.format(path=bomb),)
    assert keys(result.mesh) == ["shop/web"]
    assert not registry.is_synced  # a file not read whole


def test_anchors_nested_in_anchors_are_refused() -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, 10)]
    [error] = parse_manifest("\n".join(levels).encode(), "laughs.yaml").errors
    assert str(error) == ALIAS_PROBLEM.format(path="laughs.yaml")


def test_the_alias_budget_is_the_files_not_each_documents() -> None:
    # Each document re-uses 60,000 nodes: under the budget alone, over it together.
    document = "kind: ConfigMap\napiVersion: v1\ndata:\n"
    document += "  x: &a [" + ", ".join(["1"] * 20_000) + "]\n  y: [*a, *a, *a]\n"
    parsed = parse_manifest(f"{document}---\n{document}".encode(), "two.yaml")
    assert [str(e) for e in parsed.errors] == [
        ALIAS_PROBLEM.format(path="two.yaml").replace("document 1", "document 2")
    ]
    assert parse_manifest(document.encode(), "one.yaml").errors == ()


def test_an_alias_inside_its_own_anchor_is_refused() -> None:
    parsed = parse_manifest(b"spec: &s {ports: [*s]}\n", "loop.yaml")
    assert not parsed.complete
    assert [str(e) for e in parsed.errors] == [
        "loop.yaml: document 1: a YAML alias refers to a node that holds it:"
        " a structure without end"
    ]


def test_anchors_as_people_write_them_are_read(tmp_path: Path) -> None:
    # Anchors hold within one document: a List of both objects.
    (tmp_path / "web.yaml").write_text(
        "apiVersion: v1\nkind: List\nitems:\n"
        "- apiVersion: v1\n  kind: Service\n  metadata:\n    name: web\n    namespace: shop\n"
        "    labels: &labels {app: web, tier: front}\n"
        "  spec: {clusterIP: 10.96.0.1, ports: &ports [{name: http, port: 80}]}\n"
        "- apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n"
        "  metadata: {name: web-1, namespace: shop, labels: {<<: *labels,"
        " kubernetes.io/service-name: web}}\n"
        "  addressType: IPv4\n  ports: *ports\n"
        "  endpoints:\n  - {addresses: [10.1.0.1], conditions: &ready {ready: true}}\n"
        "  - {addresses: [10.1.0.2], conditions: *ready}\n"
    )
    result = Loaded(tmp_path).load()
    assert result.errors == ()
    assert addresses(result.mesh, "shop/web") == ["10.1.0.1", "10.1.0.2"]


# --- Folders: symlinks out of PATH, too many, scanned off the loop ---------------------


def test_a_symlinked_folder_is_followed_only_inside_path(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "manifests", tmp_path / "elsewhere"
    (root / "teams" / "shop").mkdir(parents=True)
    (root / "teams" / "shop" / "web.yaml").write_text(service_yaml("web", "10.96.0.1"))
    (root / "shop").symlink_to("teams/shop")  # inside: followed, and read once
    elsewhere.mkdir()
    (elsewhere / "stray.yaml").write_text(service_yaml("stray", "10.96.0.9"))
    (root / "usr").symlink_to(elsewhere)
    (root / "up").symlink_to("..")  # PATH's parent, which holds elsewhere too
    registry = Registry()
    ManifestSource(root, registry).load()
    result = registry.result()
    assert keys(result.mesh) == ["shop/web"]
    assert result.errors == (
        f"{root / 'up'}: a symlink to {tmp_path}, a folder outside {root}: not followed",
        f"{root / 'usr'}: a symlink to {elsewhere}, a folder outside {root}: not followed",
    )
    # What is left out was never a part of the mesh: nothing is held back for it.
    assert registry.is_synced
    # teams/shop is walked once, by the name that comes first.
    tree = scan(str(root))
    assert tree.folders == [str(root), str(root / "shop"), str(root / "teams")]
    assert list(tree.files) == [str(root / "shop" / "web.yaml")]


def test_a_projected_volumes_folders_are_read(tmp_path: Path) -> None:
    # kubelet's layout for a volume with items in subfolders: `team -> ..data/team`.
    version = tmp_path / "..2025_01_20_14_02_51.123456789"
    (version / "team").mkdir(parents=True)
    (version / "team" / "web.yaml").write_text(service_yaml("web", "10.96.0.1"))
    (tmp_path / "..data").symlink_to(version.name)
    (tmp_path / "team").symlink_to("..data/team")
    result = Loaded(tmp_path).load()
    assert (keys(result.mesh), result.errors) == (["shop/web"], ())


def make_folders(root: Path, count: int) -> list[Path]:
    folders = [root / f"f{n:04}" for n in range(count)]
    for folder in folders:
        folder.mkdir(parents=True)
    return folders


def test_more_folders_than_the_limit_are_a_problem_and_not_walked(tmp_path: Path) -> None:
    root = tmp_path / "manifests"
    # PATH and MAX_FOLDERS - 1 folders in it are walked; the last one is not.
    folders = make_folders(root, MAX_FOLDERS)
    (folders[0] / "web.yaml").write_text(service_yaml("web", "10.96.0.1"))
    (folders[-1] / "api.yaml").write_text(service_yaml("api", "10.96.0.2"))
    tree = scan(str(root))
    assert len(tree.folders) == MAX_FOLDERS
    assert tree.unwalked == {str(folders[-1])}
    registry = Registry()
    source = ManifestSource(root, registry)
    source.load()
    result = registry.result()
    assert result.errors == (
        f"{root}: more than 1,000 folders: only the first 1,000 (in name order) are read;"
        " the files in the others keep their last good objects",
    )
    assert keys(result.mesh) == ["shop/web"]
    assert not registry.is_synced  # the files past the limit are not known
    folders[-2].rmdir()
    source.load()
    assert registry.is_synced
    assert (keys(registry.result().mesh), registry.result().errors) == (
        ["shop/api", "shop/web"],
        (),
    )
    # After the first sync, files past the limit keep their last good objects: two
    # folders more, first by name, and api.yaml's is past it again.
    make_folders(root / "a", 1)
    source.load()
    assert keys(registry.result().mesh) == ["shop/api", "shop/web"]
    assert len(registry.result().errors) == 1


@pytest.mark.parametrize("use_inotify", [True, False], ids=["inotify", "polling"])
async def test_the_watch_and_reload_scan_off_the_event_loop(
    tmp_path: Path, use_inotify: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "team").mkdir()
    registry = Registry()
    source = ManifestSource(tmp_path, registry)
    await source.reload()
    changed = asyncio.Event()

    async def on_change() -> None:
        await source.reload()
        changed.set()

    # The threads that list folders under tmp_path (os.scandir is looked up at each call).
    listed_by: list[str] = []
    real_scandir = os.scandir

    def recording(path: Any = ".") -> Any:
        if str(path).startswith(str(tmp_path)):
            listed_by.append(threading.current_thread().name)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", recording)
    watch = asyncio.create_task(
        source.watch(on_change, use_inotify=use_inotify, poll_interval=0.05, rescan_interval=0.05)
    )
    try:
        (tmp_path / "team" / "web.yaml").write_text(service_yaml("web", "10.96.0.1"))
        await asyncio.wait_for(changed.wait(), 10)
    finally:
        watch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watch
    assert keys(registry.result().mesh) == ["shop/web"]
    assert listed_by
    assert threading.current_thread().name not in listed_by
