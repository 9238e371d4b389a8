"""Sidecar injection: the pod mutation (pure), `meshlet inject`, and the admission webhook."""
