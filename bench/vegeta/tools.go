// The HTTP load generator of bench/proxy.py's fixed-rate runs (bench/go_build.py builds it).

//go:build tools

package tools

import _ "github.com/tsenart/vegeta/v12"
