// The CNCF Distribution registry (the "registry" image's server), built from its Go module (pinned in go.mod) with
// only the filesystem storage driver: docs/kubernetes.md's publishing commands (helm push to oci://, docker push)
// run against it in test/integration/k8s-docs.test.ts, on a loopback port. Upstream's cmd/registry also links the
// S3, Azure and GCS drivers, the pull-through proxy and the token auth, which a local registry does not use.
package main

import (
	"github.com/distribution/distribution/v3/registry"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
)

func main() {
	// `registry serve <config.yml>` and `registry --version`, as upstream's binary; a failing command exits 1.
	_ = registry.RootCmd.Execute()
}
