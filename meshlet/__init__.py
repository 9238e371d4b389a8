"""meshlet: a DNS-plus-VIP service-mesh sidecar and its xDS control plane."""

__version__ = "0.1.0"


def build_info() -> dict[str, str]:
    """What this build is: `meshlet version`, the control plane's /version and the
    `meshlet_build_info` metric say it."""
    import platform

    return {"version": __version__, "python": platform.python_version()}
