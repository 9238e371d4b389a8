"""The control-plane process as an operator meets it: bad edits, admin endpoints, OTLP."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.otlp_receiver import Receiver, otlp_env, receiving
from tests.procs import (
    ControlPlane,
    control_plane,
    endpoint_slice_manifest,
    service_manifest,
    stop_process,
    wait_until,
    without_root_powers,
    write_atomically,
    write_manifests,
)

WEB_CLUSTER = "outbound|80||web.default.svc.cluster.local"


def web(*addresses: str) -> list[dict[str, Any]]:
    return [
        service_manifest("web", "default", "10.96.0.10", [("http", 80, "http")]),
        endpoint_slice_manifest("web", "default", [("http", 8080)], addresses),
    ]


def endpoints_served(config: dict[str, Any]) -> list[str]:
    cla = config["eds"]["resources"][WEB_CLUSTER]["resource"]
    return [
        e["endpoint"]["address"]["socketAddress"]["address"]
        for locality in cla["endpoints"]
        for e in locality["lbEndpoints"]
    ]


def test_a_bad_edit_is_reported_and_the_last_good_state_keeps_serving(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    write_manifests(folder / "web.yaml", *web("10.1.0.1", "10.1.0.2"))
    with control_plane(folder, tmp_path) as plane:
        assert endpoints_served(plane.config()) == ["10.1.0.1", "10.1.0.2"]
        write_atomically(folder / "web.yaml", "kind: Service\n  bad: [indent\n")
        problems = wait_until(
            bool,
            10,
            "the broken file to be reported",
            observe=lambda: plane.get_json("/debug/problems"),
        )
        assert "web.yaml" in problems[0]
        assert endpoints_served(plane.config()) == ["10.1.0.1", "10.1.0.2"]
        assert plane.get("/readyz")[0] == 200
        # Fixing it clears the problem and applies the new content.
        write_manifests(folder / "web.yaml", *web("10.1.0.3"))
        wait_until(
            lambda eps: eps == ["10.1.0.3"],
            10,
            "the fixed file to be served",
            observe=lambda: endpoints_served(plane.config()),
        )
        assert plane.get_json("/debug/problems") == []
        assert "Traceback" not in plane.process.log_text()


def test_wrong_objects_at_start_are_reported_and_the_rest_is_served(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    write_manifests(folder / "web.yaml", *web("10.1.0.1"))
    (folder / "bad.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: ok}\nspec: {clusterIP: 10.96.9.9, "
        "ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: broken}\n"
        "spec:\n  clusterIP: 10.96.9.10\n  ports: [{port: 70000}]\n"
    )
    with control_plane(folder, tmp_path) as plane:
        assert plane.get("/readyz")[0] == 200
        assert endpoints_served(plane.config()) == ["10.1.0.1"]
        assert "outbound|80||ok.default.svc.cluster.local" in plane.config()["cds"]["resources"]
        [problem] = plane.get_json("/debug/problems")
        assert "bad.yaml" in problem and "document 2" in problem and "70000" in problem
        assert problem in plane.process.log_text()


NOT_READY = (503, "waiting for every manifest file to be read whole (see /debug/problems)\n")


def assert_nothing_served_for(plane: ControlPlane, problem: str) -> None:
    problems = wait_until(
        bool, 30, "the problem to be reported", observe=lambda: plane.get_json("/debug/problems")
    )
    assert problems == [problem]
    assert plane.get("/readyz") == NOT_READY
    status, body = plane.get("/debug/config")
    assert (status, json.loads(body)) == (503, {"error": "no snapshot yet"})
    assert f"{problem} (nothing is served until the sources are read whole)" in (
        plane.process.log_text()
    )


def test_a_file_not_read_whole_at_start_holds_everything_back_until_fixed(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    write_manifests(folder / "web.yaml", *web("10.1.0.1"))
    db = service_manifest("db", "default", "10.96.0.30", [("tcp", 5432, 5432)])
    bad = folder / "db.yaml"
    # Not a wrong object but a file whose objects are not known: no day 30 in February.
    write_manifests(bad, db, {"apiVersion": "v1", "kind": "ConfigMap", "data": {}})
    bad.write_text(bad.read_text().replace("data: {}", "data: {day: 2024-02-30}"))
    with control_plane(folder, tmp_path, wait_ready=False) as plane:
        assert_nothing_served_for(
            plane,
            f"{bad}: document 2: invalid YAML: a value that cannot be read"
            " (day is out of range for month)",
        )
        write_manifests(bad, db)
        plane.wait_ready()
        clusters = plane.config()["cds"]["resources"]
        assert "outbound|5432||db.default.svc.cluster.local" in clusters
        assert endpoints_served(plane.config()) == ["10.1.0.1"]
        assert plane.get_json("/debug/problems") == []
        assert "Traceback" not in plane.process.log_text()


def test_a_folder_that_cannot_be_listed_at_start_holds_everything_back(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    write_manifests(folder / "web.yaml", *web("10.1.0.1"))
    folder.chmod(0)
    try:
        # Not as root, who can list any folder.
        with control_plane(
            folder, tmp_path, wait_ready=False, argv_prefix=without_root_powers()
        ) as plane:
            assert_nothing_served_for(plane, f"{folder}: cannot read: Permission denied")
            folder.chmod(0o755)
            plane.wait_ready()
            assert endpoints_served(plane.config()) == ["10.1.0.1"]
            assert plane.get_json("/debug/problems") == []
    finally:
        folder.chmod(0o755)


def test_a_service_claiming_an_older_ones_cluster_ip_is_left_out(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    older = web("10.1.0.1")
    older[0]["metadata"]["creationTimestamp"] = "2024-01-01T00:00:00Z"
    write_manifests(folder / "web.yaml", *older)
    with control_plane(folder, tmp_path) as plane:
        # "other" sorts before "web", but has no creationTimestamp: web is older.
        write_manifests(
            folder / "other.yaml",
            service_manifest("other", "default", "10.96.0.10", [("http", 80, 80)]),
        )
        write_manifests(
            folder / "db.yaml",
            service_manifest("db", "default", "10.96.0.30", [("tcp", 5432, 5432)]),
        )
        problems = wait_until(
            bool,
            10,
            "the conflict to be reported",
            observe=lambda: plane.get_json("/debug/problems"),
        )
        assert problems == [
            f"{folder / 'other.yaml'}: document 1 (Service default/other): ClusterIP 10.96.0.10"
            f" is Service default/web's (in {folder / 'web.yaml'}: document 1), which has a"
            " creationTimestamp and this one has none; this Service is left out"
        ]
        clusters = wait_until(
            lambda names: "outbound|5432||db.default.svc.cluster.local" in names,
            10,
            "the other services to be served",
            observe=lambda: set(plane.config()["cds"]["resources"]),
        )
        assert WEB_CLUSTER in clusters
        assert not any("other" in name for name in clusters)
        assert endpoints_served(plane.config()) == ["10.1.0.1"]


def children(pid: int) -> dict[int, str]:
    """The child processes of `pid`: their PIDs and command lines."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:  # ended meanwhile
            continue
        # The field after "(name)" is the state, then the parent's PID.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found[int(entry)] = command.replace(b"\0", b" ").decode(errors="replace")
    return found


def parser_of(pid: int) -> int | None:
    """The control plane's manifest parser process, while one runs."""
    found = [child for child, command in children(pid).items() if "parse_worker" in command]
    return found[0] if found else None


def big_service(name: str, ip: str, filler: int) -> dict[str, Any]:
    """A valid Service some megabytes big: slow enough to parse to be caught at it."""
    svc = service_manifest(name, "default", ip, [("http", 80, 80)])
    svc["metadata"]["annotations"] = {f"example.com/note-{n}": "x" for n in range(filler)}
    return svc


def test_health_answers_while_a_big_manifest_is_parsed(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    write_manifests(folder / "web.yaml", *web("10.1.0.1"))
    with control_plane(folder, tmp_path) as plane:
        for attempt in range(3):
            big = f"big{attempt}"
            write_manifests(folder / "big.yaml", big_service(big, "10.96.0.40", 60_000))
            parser = wait_until(
                lambda: parser_of(plane.process.pid), 30, "a child process to parse big.yaml"
            )
            # Stopped, the parse cannot end: whatever answers now answers during it.
            os.kill(parser, signal.SIGSTOP)
            try:
                clusters = str(plane.config()["cds"]["resources"])
                if big in clusters:
                    continue  # it was done before it was stopped: try a new file
                assert plane.get("/healthz") == (200, "ok\n")
                assert plane.get("/readyz")[0] == 200
                assert endpoints_served(plane.config()) == ["10.1.0.1"]
                assert parser_of(plane.process.pid) == parser
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(parser, signal.SIGCONT)
            break
        else:
            pytest.fail("every big file was parsed before its parser could be stopped")
        wait_until(
            lambda names: big in names,
            60,
            "the big Service to be served",
            observe=lambda: str(plane.config()["cds"]["resources"]),
        )
        # The child ends with its reload: no memory of the big file stays behind.
        wait_until(lambda: parser_of(plane.process.pid) is None, 30, "the parser to end")


def test_stopping_ends_a_parse_in_progress(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    write_manifests(folder / "web.yaml", *web("10.1.0.1"))
    with control_plane(folder, tmp_path) as plane:
        write_manifests(folder / "big.yaml", big_service("big", "10.96.0.40", 60_000))
        parser = wait_until(
            lambda: parser_of(plane.process.pid), 30, "a child process to parse big.yaml"
        )
        os.kill(parser, signal.SIGSTOP)  # a parse that would never end by itself
        try:
            assert stop_process(plane.process.popen, timeout=20) == 0
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(parser, signal.SIGCONT)
        assert not Path(f"/proc/{parser}").exists()


def test_a_file_over_max_manifest_bytes_is_its_own_problem(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    write_manifests(folder / "web.yaml", *web("10.1.0.1"))
    with control_plane(folder, tmp_path, extra_args=["--max-manifest-bytes=4Ki"]) as plane:
        write_manifests(
            folder / "web.yaml", *web("10.1.0.2"), big_service("big", "10.96.0.40", 500)
        )
        write_manifests(
            folder / "db.yaml",
            service_manifest("db", "default", "10.96.0.30", [("tcp", 5432, 5432)]),
        )
        problems = wait_until(
            lambda found: found and "db.default" in str(plane.config()["cds"]["resources"]),
            10,
            "the big file to be reported and the other served",
            observe=lambda: plane.get_json("/debug/problems"),
        )
        size = (folder / "web.yaml").stat().st_size
        assert problems == [
            f"{folder / 'web.yaml'}: {size:,} bytes: over --max-manifest-bytes (4,096), so not"
            " read; its last good objects stay"
        ]
        assert endpoints_served(plane.config()) == ["10.1.0.1"]


def test_100000_broken_documents_are_a_few_lines_of_problems(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    write_manifests(folder / "web.yaml", *web("10.1.0.1"))
    junk = folder / "junk.yaml"
    with control_plane(folder, tmp_path) as plane:
        write_atomically(junk, "--- nope\n" * 100_000)
        problems = wait_until(
            bool,
            60,
            "the broken file to be reported",
            observe=lambda: plane.get_json("/debug/problems"),
        )
        assert len(problems) == 6
        assert problems[-1] == f"{junk}: 99,995 more problems in this file (the first 5 are listed)"
        status, body = plane.get("/debug/problems")
        assert status == 200 and len(body) < 2000

        def logged() -> int:
            return sum(str(junk) in line for line in plane.process.log_text().splitlines())

        assert logged() == 6
        # Another reload (a change elsewhere) logs nothing of it again.
        write_manifests(folder / "web.yaml", *web("10.1.0.2"))
        wait_until(
            lambda eps: eps == ["10.1.0.2"],
            10,
            "the change to be served",
            observe=lambda: endpoints_served(plane.config()),
        )
        assert logged() == 6


def test_health_endpoints_and_metrics(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    write_manifests(folder / "web.yaml", *web("10.1.0.1"))
    with control_plane(folder, tmp_path) as plane:
        assert plane.get("/healthz") == (200, "ok\n")
        metrics = plane.metrics()
        assert "meshlet_xds_resources{" in metrics
        assert 'type="cds"} 2.0' in metrics  # web's cluster and PassthroughCluster
        assert plane.get("/nope")[0] == 404


@pytest.fixture
def collector() -> Iterator[tuple[Receiver, int]]:
    with receiving() as found:
        yield found


def test_otlp_export_switches_on_with_the_standard_variable(
    tmp_path: Path, collector: tuple[Receiver, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    servicer, port = collector
    folder = tmp_path / "manifests"
    folder.mkdir()
    write_manifests(folder / "web.yaml", *web("10.1.0.1"))
    for name, value in otlp_env(port).items():
        monkeypatch.setenv(name, value)
    with control_plane(folder, tmp_path):
        names = wait_until(
            lambda n: "meshlet.xds.resources" in n,
            20,
            "the control plane to export over OTLP",
            observe=servicer.names,
        )
        assert "meshlet.xds.resources" in names
