// Pins the Tilt release the tests run, and its hash (go.sum). It is built from the
// module cache's copy of that release, not as a dependency of this module: Tilt's
// go.mod has replace directives, which hold only in its own module (tests/k8s/build.py).
module meshlet.dev/tests/k8s/tilt

go 1.23.0

require github.com/tilt-dev/tilt v0.33.21
