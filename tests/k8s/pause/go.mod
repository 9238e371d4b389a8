module meshlet.dev/tests/k8s/pause

// The pod sandbox's pause program for the test node (no registry to pull one from).
go 1.26.0
