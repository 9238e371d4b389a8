// Command go-control-plane-bench serves xDS from go-control-plane's snapshot cache
// and ADS server, as the peer of meshlet's control plane in bench/xds_fanout.py.
//
// It listens on -listen (127.0.0.1:0 by default), prints "xds HOST:PORT" on stdout
// and then obeys one command per line on stdin, answering each with one line:
//
//	load PATH   read PATH (a serialized DiscoveryResponse whose resources are the
//	            snapshot's, of any mix of types) and set it as the one snapshot every
//	            node shares: "ok VERSIONS" or "error WHY"
//	streams     "streams SOTW DELTA": the ADS streams open now
//
// A type's version is a hash of its resources, so a load that changes one
// ClusterLoadAssignment bumps the EDS version alone, as a control plane that
// versions per type would. Stdin closed means stop.
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"sort"
	"strings"
	"sync/atomic"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	server "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	// The resource types a snapshot may hold, registered for anypb.UnmarshalNew.
	_ "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// group maps every node to one snapshot: the bench's clients all share one mesh.
type group struct{}

func (group) ID(*core.Node) string { return "mesh" }

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "xDS address")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)

	ctx := context.Background()
	snapshots := cache.NewSnapshotCache(true, group{}, nil)
	var sotw, delta atomic.Int64
	callbacks := server.CallbackFuncs{
		StreamOpenFunc:        func(context.Context, int64, string) error { sotw.Add(1); return nil },
		StreamClosedFunc:      func(int64, *core.Node) { sotw.Add(-1) },
		DeltaStreamOpenFunc:   func(context.Context, int64, string) error { delta.Add(1); return nil },
		DeltaStreamClosedFunc: func(int64, *core.Node) { delta.Add(-1) },
	}
	xds := server.NewServer(ctx, snapshots, callbacks)
	// Thousands of streams on one server, as go-control-plane's own example allows.
	grpcServer := grpc.NewServer(grpc.MaxConcurrentStreams(1 << 20))
	discovery.RegisterAggregatedDiscoveryServiceServer(grpcServer, xds)

	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("listen %s: %v", *listen, err)
	}
	go func() {
		if err := grpcServer.Serve(lis); err != nil {
			log.Fatalf("serve: %v", err)
		}
	}()
	fmt.Printf("xds %s\n", lis.Addr())

	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		command, arg, _ := strings.Cut(strings.TrimSpace(in.Text()), " ")
		switch command {
		case "load":
			versions, err := load(ctx, snapshots, arg)
			if err != nil {
				fmt.Printf("error %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
			} else {
				fmt.Printf("ok %s\n", versions)
			}
		case "streams":
			fmt.Printf("streams %d %d\n", sotw.Load(), delta.Load())
		default:
			fmt.Printf("error unknown command %q\n", command)
		}
	}
	grpcServer.Stop()
}

func load(ctx context.Context, snapshots cache.SnapshotCache, path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	var container discovery.DiscoveryResponse
	if err := proto.Unmarshal(data, &container); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	byType := map[string][]types.Resource{}
	for _, packed := range container.GetResources() {
		message, err := anypb.UnmarshalNew(packed, proto.UnmarshalOptions{})
		if err != nil {
			return "", fmt.Errorf("%s: %w", packed.GetTypeUrl(), err)
		}
		byType[packed.GetTypeUrl()] = append(byType[packed.GetTypeUrl()], message)
	}
	snapshot := &cache.Snapshot{}
	var versions []string
	for typeURL, resources := range byType {
		index := cache.GetResponseType(typeURL)
		if index == types.UnknownType {
			return "", fmt.Errorf("the snapshot cache has no place for %s", typeURL)
		}
		version := typeVersion(resources)
		snapshot.Resources[index] = cache.NewResources(version, resources)
		versions = append(versions, fmt.Sprintf("%s=%s", typeURL[strings.LastIndex(typeURL, ".")+1:], version))
	}
	if err := snapshot.Consistent(); err != nil {
		return "", err
	}
	if err := snapshots.SetSnapshot(ctx, "mesh", snapshot); err != nil {
		return "", err
	}
	sort.Strings(versions)
	return strings.Join(versions, ","), nil
}

// typeVersion hashes a type's resources in name order (deterministic marshaling).
func typeVersion(resources []types.Resource) string {
	named := make(map[string][]byte, len(resources))
	names := make([]string, 0, len(resources))
	for _, r := range resources {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
		if err != nil {
			log.Fatalf("marshal %s: %v", cache.GetResourceName(r), err)
		}
		name := cache.GetResourceName(r)
		named[name] = b
		names = append(names, name)
	}
	sort.Strings(names)
	h := sha256.New()
	for _, name := range names {
		fmt.Fprintf(h, "%s\x00%d\x00", name, len(named[name]))
		h.Write(named[name])
	}
	return hex.EncodeToString(h.Sum(nil))[:12]
}
