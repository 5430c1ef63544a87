// kube-apiserver built from its Go module (k8s.io/kubernetes, pinned in go.mod), so the Helm test's objects are
// judged by a real API server: defaulting, validation and CRD schemas, which a type check does not apply.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
