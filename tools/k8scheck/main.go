// k8scheck decodes every object of a multi-document YAML stream (the output of `helm template`) strictly into
// its Kubernetes API type, as an API server does with fieldValidation=Strict: an unknown field, a duplicate
// field, a field of the wrong type or case ("Image" for "image"), or a kind it does not know fails the object.
// It also checks object names, container names and labels against the API's name rules.
//
// Usage: k8scheck [file ...]   (stdin when no file is given)
// Prints one line per object ("ok apps/v1 DaemonSet ns/name"), and each failure as
// "FAIL doc <n> <apiVersion> <kind> <name>: <reason>". Exit 0 when every object passed, 1 otherwise, 2 on usage.
//
// Built by scripts/setup.sh from the module pinned in this directory (go.mod, go.sum); used by
// test/integration/helm.test.ts on every object the chart in deploy/helm/scrapez renders.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	monitoringv1alpha1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1alpha1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metavalidation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// types maps "apiVersion kind" to a constructor of its Go type. A kind not listed here fails: nothing the chart
// renders escapes the check.
var types = map[string]func() any{
	"v1 ConfigMap":                                func() any { return &corev1.ConfigMap{} },
	"v1 Secret":                                   func() any { return &corev1.Secret{} },
	"v1 Service":                                  func() any { return &corev1.Service{} },
	"v1 ServiceAccount":                           func() any { return &corev1.ServiceAccount{} },
	"v1 Pod":                                      func() any { return &corev1.Pod{} },
	"apps/v1 Deployment":                          func() any { return &appsv1.Deployment{} },
	"apps/v1 DaemonSet":                           func() any { return &appsv1.DaemonSet{} },
	"apps/v1 StatefulSet":                         func() any { return &appsv1.StatefulSet{} },
	"networking.k8s.io/v1 NetworkPolicy":          func() any { return &networkingv1.NetworkPolicy{} },
	"policy/v1 PodDisruptionBudget":               func() any { return &policyv1.PodDisruptionBudget{} },
	"rbac.authorization.k8s.io/v1 Role":           func() any { return &rbacv1.Role{} },
	"rbac.authorization.k8s.io/v1 RoleBinding":    func() any { return &rbacv1.RoleBinding{} },
	"monitoring.coreos.com/v1 Prometheus":         func() any { return &monitoringv1.Prometheus{} },
	"monitoring.coreos.com/v1 ServiceMonitor":     func() any { return &monitoringv1.ServiceMonitor{} },
	"monitoring.coreos.com/v1 PodMonitor":         func() any { return &monitoringv1.PodMonitor{} },
	"monitoring.coreos.com/v1alpha1 ScrapeConfig": func() any { return &monitoringv1alpha1.ScrapeConfig{} },
}

type header struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   metav1.ObjectMeta `json:"metadata"`
}

// check decodes one document (YAML) strictly and returns the object's description and every problem found.
func check(doc []byte) (string, []string) {
	js, err := yaml.YAMLToJSONStrict(doc) // duplicate keys fail here
	if err != nil {
		return "?", []string{"not valid YAML: " + err.Error()}
	}
	var h header
	if err := kjson.UnmarshalCaseSensitivePreserveInts(js, &h); err != nil {
		return "?", []string{"no readable apiVersion/kind/metadata: " + err.Error()}
	}
	what := fmt.Sprintf("%s %s %s", h.APIVersion, h.Kind, name(h.Metadata))
	mk, ok := types[h.APIVersion+" "+h.Kind]
	if !ok {
		return what, []string{fmt.Sprintf("kind %q of %q is not one k8scheck knows: add its Go type to tools/k8scheck", h.Kind, h.APIVersion)}
	}
	obj := mk()
	strictErrs, err := kjson.UnmarshalStrict(js, obj, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	var problems []string
	if err != nil {
		problems = append(problems, "does not decode: "+err.Error())
	}
	for _, e := range strictErrs {
		problems = append(problems, e.Error())
	}
	problems = append(problems, names(h, obj)...)
	return what, problems
}

func name(m metav1.ObjectMeta) string {
	if m.Namespace != "" {
		return m.Namespace + "/" + m.Name
	}
	return m.Name
}

// names checks the object's name, labels and annotations, and the names and label selectors inside pod templates.
func names(h header, obj any) []string {
	var errs field.ErrorList
	if h.Metadata.Name == "" {
		errs = append(errs, field.Required(field.NewPath("metadata", "name"), ""))
	} else {
		for _, m := range validation.NameIsDNSSubdomain(h.Metadata.Name, false) {
			errs = append(errs, field.Invalid(field.NewPath("metadata", "name"), h.Metadata.Name, m))
		}
	}
	errs = append(errs, metavalidation.ValidateLabels(h.Metadata.Labels, field.NewPath("metadata", "labels"))...)
	errs = append(errs, validation.ValidateAnnotations(h.Metadata.Annotations, field.NewPath("metadata", "annotations"))...)
	var spec *corev1.PodSpec
	var tmpl *corev1.PodTemplateSpec
	var sel *metav1.LabelSelector
	switch o := obj.(type) {
	case *appsv1.Deployment:
		tmpl, sel = &o.Spec.Template, o.Spec.Selector
	case *appsv1.DaemonSet:
		tmpl, sel = &o.Spec.Template, o.Spec.Selector
	case *appsv1.StatefulSet:
		tmpl, sel = &o.Spec.Template, o.Spec.Selector
	case *corev1.Pod:
		spec = &o.Spec
	}
	if tmpl != nil {
		spec = &tmpl.Spec
		p := field.NewPath("spec", "template", "metadata", "labels")
		errs = append(errs, metavalidation.ValidateLabels(tmpl.Labels, p)...)
		if sel == nil {
			errs = append(errs, field.Required(field.NewPath("spec", "selector"), ""))
		} else {
			for k, v := range sel.MatchLabels {
				if tmpl.Labels[k] != v {
					errs = append(errs, field.Invalid(field.NewPath("spec", "selector", "matchLabels", k), v,
						"the pod template's labels do not match the selector"))
				}
			}
		}
	}
	if spec != nil {
		errs = append(errs, podNames(spec, field.NewPath("spec", "template", "spec"))...)
	}
	out := make([]string, 0, len(errs))
	for _, e := range errs {
		out = append(out, e.Error())
	}
	return out
}

// podNames: containers and volumes are DNS-1123 labels, unique; every volumeMount names a volume.
func podNames(spec *corev1.PodSpec, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	vols := map[string]bool{}
	for i, v := range spec.Volumes {
		for _, m := range validation.NameIsDNSLabel(v.Name, false) {
			errs = append(errs, field.Invalid(p.Child("volumes").Index(i).Child("name"), v.Name, m))
		}
		if vols[v.Name] {
			errs = append(errs, field.Duplicate(p.Child("volumes").Index(i).Child("name"), v.Name))
		}
		vols[v.Name] = true
	}
	seen := map[string]bool{}
	for _, group := range []struct {
		field string
		list  []corev1.Container
	}{{"initContainers", spec.InitContainers}, {"containers", spec.Containers}} {
		for i, c := range group.list {
			cp := p.Child(group.field).Index(i)
			for _, m := range validation.NameIsDNSLabel(c.Name, false) {
				errs = append(errs, field.Invalid(cp.Child("name"), c.Name, m))
			}
			if seen[c.Name] {
				errs = append(errs, field.Duplicate(cp.Child("name"), c.Name))
			}
			seen[c.Name] = true
			for j, vm := range c.VolumeMounts {
				if !vols[vm.Name] {
					errs = append(errs, field.NotFound(cp.Child("volumeMounts").Index(j).Child("name"), vm.Name))
				}
			}
		}
	}
	if len(spec.Containers) == 0 {
		errs = append(errs, field.Required(p.Child("containers"), ""))
	}
	return errs
}

func run(in io.Reader, src string, out io.Writer) (objects, failed int, err error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(in))
	for n := 1; ; n++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objects, failed, nil
		}
		if err != nil {
			return objects, failed, fmt.Errorf("%s: %w", src, err)
		}
		if empty(doc) {
			continue
		}
		objects++
		what, problems := check(doc)
		if len(problems) == 0 {
			fmt.Fprintf(out, "ok %s\n", what)
			continue
		}
		failed++
		for _, p := range problems {
			fmt.Fprintf(out, "FAIL %s doc %d %s: %s\n", src, n, what, p)
		}
	}
}

// empty: a document with only comments and blank lines (helm template writes "# Source: ..." headers).
func empty(doc []byte) bool {
	for _, l := range bytes.Split(doc, []byte("\n")) {
		t := strings.TrimSpace(string(l))
		if t != "" && !strings.HasPrefix(t, "#") && t != "---" {
			return false
		}
	}
	return true
}

func main() {
	args := os.Args[1:]
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
		fmt.Println("Usage: k8scheck [file ...]  (reads stdin when no file is given)")
		return
	}
	total, bad := 0, 0
	do := func(in io.Reader, src string) {
		n, f, err := run(in, src, os.Stdout)
		total, bad = total+n, bad+f
		if err != nil {
			fmt.Fprintf(os.Stdout, "FAIL %v\n", err)
			bad++
		}
	}
	if len(args) == 0 {
		do(os.Stdin, "stdin")
	}
	for _, a := range args {
		f, err := os.Open(a)
		if err != nil {
			fmt.Fprintf(os.Stderr, "k8scheck: %v\n", err)
			os.Exit(2)
		}
		do(f, a)
		f.Close()
	}
	fmt.Printf("k8scheck: %d objects, %d failed\n", total, bad)
	if total == 0 {
		fmt.Println("FAIL no objects: nothing was checked")
		os.Exit(1)
	}
	if bad > 0 {
		os.Exit(1)
	}
}
