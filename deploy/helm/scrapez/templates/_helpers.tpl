{{/*
Names, labels, and the scrapez containers every shape shares. Paths inside the containers are fixed here:
  /etc/scrapez                     the pod's ConfigMap (bind.yaml, proxy.yaml), read-only; bind reloads on its swap
  /var/run/secrets/scrapez/<role>  each identity Secret, read-only, defaultMode 0400 (readable through fsGroup)
  /var/run/scrapez                 an emptyDir: the bind status file for `scrapez probe` (the root filesystem is read-only)
*/}}

{{- define "scrapez.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "scrapez.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "scrapez.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "scrapez.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object; the component is passed as .component. */}}
{{- define "scrapez.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{ include "scrapez.selectorLabels" . }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "scrapez.selectorLabels" -}}
app.kubernetes.io/name: {{ include "scrapez.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "scrapez.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The restricted security context of the scrapez containers: containerSecurityContext + the image's numeric user. */}}
{{- define "scrapez.containerSecurityContext" -}}
{{- toYaml (merge (dict "runAsUser" .Values.image.user "runAsGroup" .Values.image.user) .Values.containerSecurityContext) -}}
{{- end -}}

{{/*
The containers the values add (exporters, init containers): {root, containers}, each given containerSecurityContext
unless it sets its own securityContext. A YAML list (empty: nothing); `fromYamlArray` it for the list itself.
*/}}
{{- define "scrapez.valuesContainers" -}}
{{- $out := list -}}
{{- range $c := .containers -}}
{{- if not $c.securityContext -}}
{{- $c = merge (dict "securityContext" $.root.Values.containerSecurityContext) $c -}}
{{- end -}}
{{- $out = append $out $c -}}
{{- end -}}
{{- with $out }}{{ toYaml . }}{{ end -}}
{{- end -}}

{{/*
The dark exporter pods (sidecar.yaml renders them, NOTES.txt lists them): `sidecar` when enabled, then each
`sidecars` entry laid over `sidecar` (its name checked). Args: root, out; sets out.pods to a list of {s (the pod's
values), name (of its objects), component, path (of its values, for error messages)}: a named template
returns only text, so the list comes back in the dict passed in (values keep their types).
*/}}
{{- define "scrapez.exporterPods" -}}
{{- $root := .root -}}
{{- $items := list -}}
{{- $fullname := include "scrapez.fullname" $root -}}
{{- if $root.Values.sidecar.enabled -}}
{{- $items = append $items (dict "s" $root.Values.sidecar "name" (printf "%s-sidecar" $fullname) "component" "sidecar" "path" "sidecar") -}}
{{- end -}}
{{- $base := omit $root.Values.sidecar "enabled" -}}
{{- $seen := dict -}}
{{- range $i, $e := $root.Values.sidecars -}}
{{- $n := $e.name | default "" -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$" $n) -}}
{{- fail (printf "sidecars[%d].name: %q is not a DNS label of at most 40 characters (it names the workload: <release>-<name>)" $i $n) -}}
{{- end -}}
{{- if or (has $n (list "proxy" "operator" "sidecar")) (hasKey $seen $n) -}}
{{- fail (printf "sidecars[%d].name: %q is taken (names are unique, and proxy, operator and sidecar name the chart's other objects)" $i $n) -}}
{{- end -}}
{{- $_ := set $seen $n true -}}
{{- $s := include "scrapez.overlay" (dict "base" $base "over" (omit $e "name" "enabled")) | fromYaml -}}
{{- $items = append $items (dict "s" $s "name" (printf "%s-%s" $fullname $n) "component" (printf "sidecar-%s" $n) "path" (printf "sidecars[%d]" $i)) -}}
{{- end -}}
{{- $_ := set .out "pods" $items -}}
{{- end -}}

{{/*
A Secret volume (identity, token, TLS): {name, secretName, field (for the error message), hint (optional, appended
to it)}. A YAML list entry (`fromYamlArray | first`: the volume as a map).
*/}}
{{- define "scrapez.secretVolume" -}}
- name: {{ .name }}
  secret:
    secretName: {{ required (printf "%s is required: the name of an existing Secret (never put identities in values)%s" .field (.hint | default "")) .secretName }}
    defaultMode: 256 # 0400: read-only for its owner (written in decimal: YAML 1.1 and 1.2 read 0400 differently)
{{- end -}}

{{/*
The scrapez bind container. Args: root, bind (the values of the bind section), nodeName (per-node identity).
Its only writable path is the status emptyDir; the exec probes read the status file there.
*/}}
{{- define "scrapez.bindContainer" -}}
{{- $b := .bind -}}
- name: scrapez-bind
  image: {{ include "scrapez.image" .root }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  command: [scrapez]
  args: [bind, --config, /etc/scrapez/bind.yaml]
  {{- if or $b.identity.perNode $b.extraEnv }}
  env:
    {{- if $b.identity.perNode }}
    - name: NODE_NAME
      valueFrom:
        fieldRef:
          fieldPath: spec.nodeName
    # One identity per node, from the Secret's key <node name>.json (overrides `identity` in bind.yaml).
    - name: SCRAPEZ_IDENTITY
      value: /var/run/secrets/scrapez/bind/$(NODE_NAME).json
    {{- end }}
    {{- with $b.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
  readinessProbe:
    exec:
      command: [scrapez, probe, --ready, --status-file, /var/run/scrapez/bind.status.json]
    periodSeconds: {{ $b.probes.readinessPeriodSeconds }}
    timeoutSeconds: {{ $b.probes.timeoutSeconds }}
    failureThreshold: 3
  livenessProbe:
    exec:
      command: [scrapez, probe, --live, --status-file, /var/run/scrapez/bind.status.json]
    initialDelaySeconds: 10
    periodSeconds: {{ $b.probes.livenessPeriodSeconds }}
    timeoutSeconds: {{ $b.probes.timeoutSeconds }}
    failureThreshold: 3
  resources:
    {{- toYaml (default .root.Values.resources.bind $b.resources) | nindent 4 }}
  securityContext:
    {{- include "scrapez.containerSecurityContext" .root | nindent 4 }}
  volumeMounts:
    - name: scrapez-config
      mountPath: /etc/scrapez
      readOnly: true
    {{- if include "scrapez.enrolls" $b }}
    # The identity `scrapez enroll` wrote at the first start (writable: a renewed certificate is kept).
    - name: scrapez-bind-identity-store
      mountPath: /var/lib/scrapez/identity
    {{- else }}
    - name: scrapez-bind-identity
      mountPath: /var/run/secrets/scrapez/bind
      readOnly: true
    {{- end }}
    - name: scrapez-status
      mountPath: /var/run/scrapez
    {{- with $b.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* Non-empty when the bind section enrols from a one-time token instead of mounting an identity Secret. */}}
{{- define "scrapez.enrolls" -}}
{{- if or (dig "identity" "enrollmentJwt" "" .) (dig "identity" "enrollmentJwtSecret" "name" "" .) -}}true{{- end -}}
{{- end -}}

{{/*
The init container enrolling scrapez bind's identity from its one-time token, once: when the store already holds an
identity (a restarted or rescheduled pod with the same volume) it does nothing, as the token is single-use.
Args: root, bind, jwtKey (the key of the token in its Secret).
*/}}
{{- define "scrapez.enrollContainer" -}}
- name: scrapez-enroll
  image: {{ include "scrapez.image" .root }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  command: [sh, -c]
  args:
    - |
      f=/var/lib/scrapez/identity/identity.json
      if [ -s "$f" ]; then
        echo "scrapez-enroll: $f exists (enrolled before): not enrolling again, the token is single-use"
        exit 0
      fi
      scrapez enroll --jwt /var/run/secrets/scrapez/enrollment/{{ .jwtKey }} --out "$f.new" && mv "$f.new" "$f"
  resources:
    {{- toYaml (default .root.Values.resources.bind .bind.resources) | nindent 4 }}
  securityContext:
    {{- include "scrapez.containerSecurityContext" .root | nindent 4 }}
  volumeMounts:
    - name: scrapez-enrollment-jwt
      mountPath: /var/run/secrets/scrapez/enrollment
      readOnly: true
    - name: scrapez-bind-identity-store
      mountPath: /var/lib/scrapez/identity
{{- end -}}

{{/*
A values overlay: .base with .over laid on it; maps are merged key by key, anything else in .over (lists, strings,
false, 0) replaces what .base has. Returned as YAML (fromYaml it). Sprig's merge cannot be used: it takes false and
"" for unset and keeps the base's value.
*/}}
{{- define "scrapez.overlay" -}}
{{- $out := deepCopy .base -}}
{{- range $k, $v := .over -}}
{{- if and (kindIs "map" $v) (kindIs "map" (get $out $k)) -}}
{{- $_ := set $out $k (include "scrapez.overlay" (dict "base" (get $out $k) "over" $v) | fromYaml) -}}
{{- else -}}
{{- $_ := set $out $k $v -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* bind.yaml: the values' config, with the identity and status file paths the container mounts. */}}
{{- define "scrapez.bindConfig" -}}
{{- $c := deepCopy .bind.config -}}
{{- if or (hasKey $c "identity") (hasKey $c "statusFile") -}}
{{- fail (printf "%s.config: leave out identity and statusFile; the chart sets them (%s.identity names the Secret)" .path .path) -}}
{{- end -}}
{{- if not $c.targets -}}
{{- fail (printf "%s.config.targets: at least one target is required" .path) -}}
{{- end -}}
{{- if include "scrapez.enrolls" .bind -}}
{{- $_ := set $c "identity" "/var/lib/scrapez/identity/identity.json" -}}
{{- else -}}
{{- $_ := set $c "identity" (printf "/var/run/secrets/scrapez/bind/%s" (ternary "identity.json" .bind.identity.key .bind.identity.perNode)) -}}
{{- end -}}
{{- $_ := set $c "statusFile" "/var/run/scrapez/bind.status.json" -}}
{{- toYaml $c -}}
{{- end -}}

{{/*
The scrapez proxy container. Args: root, proxy (values of that proxy), role (proxy, sidecar-proxy, operator-proxy),
configVolume (the ConfigMap volume holding proxy.yaml). A proxy on the pod's loopback gets exec probes
(`scrapez probe --proxy`: the kubelet's httpGet cannot reach 127.0.0.1), otherwise httpGet /-/ready and /-/healthy.
*/}}
{{- define "scrapez.proxyContainer" -}}
{{- $p := .proxy -}}
{{- $listen := $p.config.listen | default "127.0.0.1:9480" -}}
{{- $port := regexFind "[0-9]+$" $listen -}}
{{- $loopback := or (hasPrefix "127." $listen) (hasPrefix "localhost:" $listen) (hasPrefix "[::1]:" $listen) -}}
- name: {{ .name | default "scrapez-proxy" }}
  image: {{ include "scrapez.image" .root }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  command: [scrapez]
  args: [proxy, --config, {{ printf "/etc/scrapez/%s" (.configFile | default "proxy.yaml") }}]
  {{- if not $loopback }}
  ports:
    - name: http
      containerPort: {{ $port }}
      protocol: TCP
  {{- end }}
  {{- if $loopback }}
  readinessProbe:
    exec:
      command: [scrapez, probe, --ready, --proxy, {{ printf "http://%s" $listen }}]
    periodSeconds: 10
    timeoutSeconds: {{ $p.probes.timeoutSeconds | default 5 }}
  livenessProbe:
    exec:
      command: [scrapez, probe, --live, --proxy, {{ printf "http://%s" $listen }}]
    initialDelaySeconds: 10
    periodSeconds: 30
    timeoutSeconds: {{ $p.probes.timeoutSeconds | default 5 }}
  {{- else }}
  readinessProbe:
    httpGet:
      path: /-/ready
      port: http
      scheme: {{ ternary "HTTPS" "HTTP" (not (empty $p.tls.secretName)) }}
    periodSeconds: 10
  livenessProbe:
    httpGet:
      path: /-/healthy
      port: http
      scheme: {{ ternary "HTTPS" "HTTP" (not (empty $p.tls.secretName)) }}
    initialDelaySeconds: 10
    periodSeconds: 30
  {{- end }}
  {{- with $p.extraEnv }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  resources:
    {{- toYaml (default .root.Values.resources.proxy $p.resources) | nindent 4 }}
  securityContext:
    {{- include "scrapez.containerSecurityContext" .root | nindent 4 }}
  volumeMounts:
    - name: {{ .configVolume }}
      mountPath: /etc/scrapez
      readOnly: true
    - name: {{ .volumePrefix | default "scrapez-proxy" }}-identity
      mountPath: /var/run/secrets/scrapez/proxy
      readOnly: true
    {{- if $p.auth.bearerToken.secretName }}
    - name: {{ .volumePrefix | default "scrapez-proxy" }}-token
      mountPath: /var/run/secrets/scrapez/proxy-token
      readOnly: true
    {{- end }}
    {{- if $p.tls.secretName }}
    - name: {{ .volumePrefix | default "scrapez-proxy" }}-tls
      mountPath: /var/run/secrets/scrapez/proxy-tls
      readOnly: true
    {{- end }}
    {{- with $p.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* The proxy container's Secret volumes: {root, proxy, field, volumePrefix}. */}}
{{- define "scrapez.proxyVolumes" -}}
{{- $pre := .volumePrefix | default "scrapez-proxy" -}}
{{ include "scrapez.secretVolume" (dict "name" (printf "%s-identity" $pre) "secretName" .proxy.identity.secretName "field" (printf "%s.identity.secretName" .field)) }}
{{- if .proxy.auth.bearerToken.secretName }}
{{ include "scrapez.secretVolume" (dict "name" (printf "%s-token" $pre) "secretName" .proxy.auth.bearerToken.secretName "field" (printf "%s.auth.bearerToken.secretName" .field)) }}
{{- end }}
{{- if .proxy.tls.secretName }}
{{ include "scrapez.secretVolume" (dict "name" (printf "%s-tls" $pre) "secretName" .proxy.tls.secretName "field" (printf "%s.tls.secretName" .field)) }}
{{- end }}
{{- end -}}

{{/* proxy.yaml: the values' config with the identity, token and TLS paths the container mounts. */}}
{{- define "scrapez.proxyConfig" -}}
{{- $c := deepCopy .proxy.config -}}
{{- range $k := list "identities" "auth" "tls" -}}
{{- if hasKey $c $k -}}
{{- fail (printf "%s.config.%s: leave it out; the chart sets it from %s.identity, %s.auth and %s.tls (Secrets)" $.path $k $.path $.path $.path) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $c "identities" (list (printf "/var/run/secrets/scrapez/proxy/%s" .proxy.identity.key)) -}}
{{- if .proxy.auth.bearerToken.secretName -}}
{{- $_ := set $c "auth" (dict "bearerTokenFile" (printf "/var/run/secrets/scrapez/proxy-token/%s" .proxy.auth.bearerToken.key)) -}}
{{- end -}}
{{- if .proxy.tls.secretName -}}
{{- $_ := set $c "tls" (dict "cert" "/var/run/secrets/scrapez/proxy-tls/tls.crt" "key" "/var/run/secrets/scrapez/proxy-tls/tls.key") -}}
{{- end -}}
{{- toYaml $c -}}
{{- end -}}

{{/* Pod-level settings shared by every workload: {root, pod (values section)}. */}}
{{- define "scrapez.podSpecCommon" -}}
# scrapez never talks to the Kubernetes API: no token unless an exporter in the pod needs one.
automountServiceAccountToken: {{ dig "serviceAccount" "automountServiceAccountToken" false .pod }}
{{- with .serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .pod.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .pod.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .pod.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .pod.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}
