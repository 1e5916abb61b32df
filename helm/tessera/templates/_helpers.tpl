{{/*
Names and labels.
*/}}
{{- define "tessera.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tessera.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tessera.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels common to every resource; "component" is added per resource. */}}
{{- define "tessera.commonLabels" -}}
helm.sh/chart: {{ include "tessera.chart" . }}
app.kubernetes.io/name: {{ include "tessera.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tessera
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "tessera.labels" -}}
{{ include "tessera.commonLabels" . }}
app.kubernetes.io/component: broker
{{- end }}

{{- define "tessera.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tessera.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: broker
{{- end }}

{{- define "tessera.trialRedis.fullname" -}}
{{- printf "%s-trial-redis" (include "tessera.fullname" . | trunc 51 | trimSuffix "-") }}
{{- end }}

{{- define "tessera.trialRedis.labels" -}}
{{ include "tessera.commonLabels" . }}
app.kubernetes.io/component: trial-redis
tessera.dev/trial-only: "true"
{{- end }}

{{- define "tessera.trialRedis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tessera.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: trial-redis
{{- end }}

{{- define "tessera.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tessera.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tessera.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
The broker's identifier (config.broker.issuer, or https://<fullname>.<namespace>.svc).
*/}}
{{- define "tessera.brokerIssuer" -}}
{{- default (printf "https://%s.%s.svc" (include "tessera.fullname" .) .Release.Namespace) .Values.config.broker.issuer }}
{{- end }}

{{/*
Signing keys.
*/}}
{{- define "tessera.signingSecretName" -}}
{{- default (printf "%s-signing-keys" (include "tessera.fullname" .)) .Values.signing.existingSecret }}
{{- end }}

{{/* The key file names in signing order, as a JSON list. */}}
{{- define "tessera.signingKeyFiles" -}}
{{- $files := list }}
{{- if .Values.signing.existingSecret }}
{{- $files = .Values.signing.existingSecretKeys }}
{{- else }}
{{- range $i, $key := .Values.signing.keys }}
{{- $files = append $files (default (printf "signing-key-%d.pem" $i) $key.name) }}
{{- end }}
{{- end }}
{{- toJson $files }}
{{- end }}

{{/*
Redis: "external" (redis.url or redis.existingSecret), "trial" (trialRedis), or "" (the embedded store).
*/}}
{{- define "tessera.redisMode" -}}
{{- if or .Values.redis.url .Values.redis.existingSecret }}external
{{- else if .Values.trialRedis.enabled }}trial
{{- end }}
{{- end }}

{{- define "tessera.redisSecretName" -}}
{{- default (printf "%s-redis-url" (include "tessera.fullname" .)) .Values.redis.existingSecret }}
{{- end }}

{{- define "tessera.redisSecretKey" -}}
{{- if .Values.redis.existingSecret }}{{ .Values.redis.existingSecretKey }}{{ else }}redis-url{{ end }}
{{- end }}

{{- define "tessera.redisUrl" -}}
{{- if .Values.redis.url }}
{{- .Values.redis.url }}
{{- else }}
{{- printf "redis://%s.%s.svc:6379" (include "tessera.trialRedis.fullname" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{/*
TLS. The serving Secret is mounted at /etc/tessera/tls, a client CA from its own Secret or ConfigMap at
/etc/tessera/client-ca, both as directory volumes (never subPath), so renewed files reach the pod and tessera
re-reads them; tessera.toml names them relative to its folder, /etc/tessera/config.
*/}}
{{/* "serving" (the ca.crt of tls.secretName), "secret", "configMap", or "" (no client certificates). */}}
{{- define "tessera.clientCaSource" -}}
{{- $ca := .Values.tls.clientCa }}
{{- if $ca.fromServingSecret }}serving
{{- else if $ca.secretName }}secret
{{- else if $ca.configMapName }}configMap
{{- end }}
{{- end }}

{{/* The client CA bundle's path in tessera.toml (empty without one). */}}
{{- define "tessera.clientCaFile" -}}
{{- $source := include "tessera.clientCaSource" . }}
{{- if eq $source "serving" }}../tls/ca.crt
{{- else if $source }}{{ printf "../client-ca/%s" .Values.tls.clientCa.key }}
{{- end }}
{{- end }}

{{/* "https", "tcp" (clientAuth required: the kubelet sends no client certificate), or "grpc" (plaintext). */}}
{{- define "tessera.probeMode" -}}
{{- if not .Values.tls.enabled }}grpc
{{- else if and (eq .Values.tls.clientAuth "required") (include "tessera.clientCaSource" .) }}tcp
{{- else }}https
{{- end }}
{{- end }}

{{/*
TOML rendering. Strings, numbers, booleans and lists are written with toJson, whose output is valid TOML for
these (JSON string escapes are TOML basic-string escapes); maps become inline tables. Null values are left
out, so a key can be unset with `key: null`.
*/}}
{{- define "tessera.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{- define "tessera.tomlValue" -}}
{{- if kindIs "map" . }}
{{- $pairs := list }}
{{- range $k, $v := . }}
{{- if not (kindIs "invalid" $v) }}
{{- $pairs = append $pairs (printf "%s = %s" (include "tessera.tomlKey" $k) (include "tessera.tomlValue" $v)) }}
{{- end }}
{{- end }}
{{- printf "{ %s }" (join ", " $pairs) }}
{{- else if kindIs "slice" . }}
{{- $items := list }}
{{- range . }}
{{- $items = append $items (include "tessera.tomlValue" .) }}
{{- end }}
{{- printf "[%s]" (join ", " $items) }}
{{- else }}
{{- toJson . }}
{{- end }}
{{- end }}

{{/* The key = value lines of one table, from a map (sorted by key). */}}
{{- define "tessera.tomlPairs" -}}
{{- range $k, $v := . }}
{{- if not (kindIs "invalid" $v) }}
{{ include "tessera.tomlKey" $k }} = {{ include "tessera.tomlValue" $v }}
{{- end }}
{{- end }}
{{- end }}

{{/*
tessera.toml. Paths are relative to the file's folder, /etc/tessera/config: the policy beside it, the keys in
/etc/tessera/keys.
*/}}
{{- define "tessera.configToml" -}}
# tessera configuration rendered by the Helm chart {{ include "tessera.chart" . }} (release {{ .Release.Name }}).
# Relative paths resolve against this file's folder (/etc/tessera/config); the signing keys are mounted from
# the Secret {{ include "tessera.signingSecretName" . }} at /etc/tessera/keys. Check with `tessera config check`.

[server]
grpc_addr = {{ printf "0.0.0.0:%d" (int .Values.containerPorts.grpc) | toJson }}
{{- include "tessera.tomlPairs" .Values.config.server }}

[broker]
issuer = {{ include "tessera.brokerIssuer" . | toJson }}
{{- include "tessera.tomlPairs" (omit .Values.config.broker "issuer") }}

[signing]
{{- $keys := list }}
{{- range (include "tessera.signingKeyFiles" . | fromJsonArray) }}
{{- $keys = append $keys (printf "../keys/%s" .) }}
{{- end }}
# The first key signs; every key is published in the JWKS.
keys = {{ include "tessera.tomlValue" $keys }}

[policy]
file = "policy.cedar"

[log]
format = "json"
{{- include "tessera.tomlPairs" (omit .Values.config.log "format") }}
{{- with .Values.config.rate_limits }}

[rate_limits]
{{- include "tessera.tomlPairs" . }}
{{- end }}
{{- with .Values.config.approvals }}

[approvals]
{{- include "tessera.tomlPairs" . }}
{{- if .webhook_url }}
# The Secret {{ $.Values.approvals.webhookSecret.name }} is mounted at /etc/tessera/approvals.
webhook_secret_file = {{ printf "../approvals/%s" $.Values.approvals.webhookSecret.key | toJson }}
{{- end }}
{{- end }}
{{- if .Values.tls.enabled }}

[tls]
# Both listeners. The Secret {{ .Values.tls.secretName }} is mounted at /etc/tessera/tls as a directory, so a
# renewed certificate replaces these files in place; tessera re-reads them every reload_interval seconds (the
# pods do not restart).
cert_file = "../tls/tls.crt"
key_file = "../tls/tls.key"
{{- with include "tessera.clientCaFile" . }}
client_ca_file = {{ toJson . }}
client_auth = {{ toJson $.Values.tls.clientAuth }}
{{- end }}
reload_interval = {{ int .Values.tls.reloadIntervalSeconds }}
{{- end }}
{{- range .Values.config.issuers }}

[[issuers]]
{{- include "tessera.tomlPairs" (pick . "name") }}
{{- include "tessera.tomlPairs" (omit . "name") }}
{{- end }}
{{- range .Values.config.audiences }}

[[audiences]]
{{- include "tessera.tomlPairs" (pick . "id") }}
{{- include "tessera.tomlPairs" (omit . "id") }}
{{- end }}
{{- range .Values.config.routes }}

[[routes]]
{{- include "tessera.tomlPairs" (pick . "path_prefix") }}
{{- include "tessera.tomlPairs" (omit . "path_prefix") }}
{{- end }}
{{- range .Values.config.clients }}

[[clients]]
{{- include "tessera.tomlPairs" (pick . "id") }}
{{- include "tessera.tomlPairs" (omit . "id") }}
{{- end }}
{{ end }}

{{/*
The part of tessera.toml a running tessera keeps from its start (docs/config.md, "Reloading without a
restart"): every single table, less the [broker] keys a reload takes. The arrays of tables ([[issuers]],
[[audiences]], [[routes]], [[clients]]) come last in tessera.toml and all reload, as does the policy. With
config.hotReload=true the pods roll when this changes, and reload in place when only the rest does.
*/}}
{{- define "tessera.fixedConfig" -}}
{{- $toml := include "tessera.configToml" . }}
{{- $fixed := regexReplaceAll "(?s)\n\\[\\[.*$" $toml "" }}
{{- regexReplaceAll "(?m)^(task_token_max_ttl|task_introspect_clients|client_secrets|client_assertion_max_lifetime) = [^\\n]*\\n?" $fixed "" }}
{{- end }}

{{/*
Refuses unsafe or incomplete values with a message that says what to set. Included by the Deployment, so
`helm install` and `helm template` stop before anything is applied.
*/}}
{{- define "tessera.validate" -}}
{{- $v := .Values }}
{{- if and $v.config.approvals.webhook_url (not $v.approvals.webhookSecret.name) }}
{{- fail "tessera: config.approvals.webhook_url needs approvals.webhookSecret.name: the Secret holding the webhook's HMAC key" }}
{{- end }}
{{- $redis := include "tessera.redisMode" . }}
{{- $ca := $v.tls.clientCa }}
{{- $caSources := 0 }}
{{- if $ca.fromServingSecret }}{{ $caSources = add1 $caSources }}{{ end }}
{{- if $ca.secretName }}{{ $caSources = add1 $caSources }}{{ end }}
{{- if $ca.configMapName }}{{ $caSources = add1 $caSources }}{{ end }}
{{- if and $v.devMode.enabled $v.tls.enabled }}
{{- fail "\n\ntessera: tls.enabled=true cannot be combined with devMode: dev mode reads no config file, so the [tls] section the chart would render is never read and both ports would stay plaintext. Leave dev mode for TLS (set signing keys and config), or turn tls.enabled off for the trial." }}
{{- end }}
{{- if $v.tls.enabled }}
{{- if not $v.tls.secretName }}
{{- fail "\n\ntessera: tls.enabled=true needs tls.secretName: a kubernetes.io/tls Secret (tls.crt and tls.key) in the release namespace, e.g. the secretName of a cert-manager Certificate for the Service's names." }}
{{- end }}
{{- if gt $caSources 1 }}
{{- fail "\n\ntessera: set only one client CA source: tls.clientCa.fromServingSecret, tls.clientCa.secretName or tls.clientCa.configMapName." }}
{{- end }}
{{- if and (eq $v.tls.clientAuth "required") (eq $caSources 0) }}
{{- fail "\n\ntessera: tls.clientAuth=required needs a client CA to verify client certificates against: set tls.clientCa.fromServingSecret=true (the ca.crt of tls.secretName), tls.clientCa.secretName or tls.clientCa.configMapName." }}
{{- end }}
{{- range list $v.service.grpcAppProtocol $v.service.httpAppProtocol }}
{{- if eq . "kubernetes.io/h2c" }}
{{- fail "\n\ntessera: service appProtocol kubernetes.io/h2c means HTTP/2 without TLS, but tls.enabled=true serves TLS on both ports: use grpc for the gRPC port (and leave service.httpAppProtocol empty for https)." }}
{{- end }}
{{- end }}
{{- if and $v.serviceMonitor.enabled (eq (include "tessera.probeMode" .) "tcp") (not (and (or $v.serviceMonitor.tlsConfig.cert $v.serviceMonitor.tlsConfig.certFile) (or $v.serviceMonitor.tlsConfig.keySecret $v.serviceMonitor.tlsConfig.keyFile))) }}
{{- fail "\n\ntessera: with tls.clientAuth=required every connection needs a client certificate, /metrics included: give Prometheus one the client CA accepts in serviceMonitor.tlsConfig (cert: {secret: {name, key}} and keySecret: {name, key}, or certFile and keyFile)." }}
{{- end }}
{{- else }}
{{- if or $caSources (eq $v.tls.clientAuth "required") }}
{{- fail "\n\ntessera: tls.clientCa and tls.clientAuth take effect only with tls.enabled=true (client certificates are asked for in the TLS handshake): set tls.enabled=true and tls.secretName, or remove them." }}
{{- end }}
{{- if $v.serviceMonitor.tlsConfig }}
{{- fail "\n\ntessera: serviceMonitor.tlsConfig is used only with tls.enabled=true: without TLS, /metrics is scraped over plain HTTP. Remove it, or turn TLS on." }}
{{- end }}
{{- end }}
{{- if not (and $v.tls.enabled $caSources) }}
{{- range $v.config.clients }}
{{- if .tls_identities }}
{{- fail (printf "\n\ntessera: config.clients %s has tls_identities, which name client certificates: they need tls.enabled=true and a client CA (tls.clientCa) to verify them against." .id) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and $v.devMode.enabled (not $v.devMode.acknowledgeNotForProduction) }}
{{- fail "\n\ntessera: devMode.enabled=true runs the broker with keys generated in the pod, a demo catalog and policy, and a client that needs no credentials: it is NOT for production. To run a throwaway trial anyway, also set devMode.acknowledgeNotForProduction=true." }}
{{- end }}
{{- if and $v.devMode.enabled (or (gt (int $v.replicaCount) 1) $v.autoscaling.enabled) }}
{{- fail "\n\ntessera: devMode runs a single pod (each pod would generate its own signing and dev issuer keys): set replicaCount=1 and autoscaling.enabled=false, or leave dev mode." }}
{{- end }}
{{- if and (or (gt (int $v.replicaCount) 1) $v.autoscaling.enabled) (not $redis) }}
{{- fail "\n\ntessera: replicaCount > 1 or autoscaling.enabled=true needs a shared Redis: without one every pod keeps its own embedded, per-process store, so a token revoked through one pod stays active on the others. Set redis.url or redis.existingSecret (or trialRedis.enabled=true for a trial), or run one replica." }}
{{- end }}
{{- if and $v.redis.url $v.redis.existingSecret }}
{{- fail "\n\ntessera: set only one of redis.url and redis.existingSecret." }}
{{- end }}
{{- if and $v.trialRedis.enabled (or $v.redis.url $v.redis.existingSecret) }}
{{- fail "\n\ntessera: trialRedis.enabled=true deploys a Redis for trials; it cannot be combined with an external Redis (redis.url or redis.existingSecret). Turn one of them off." }}
{{- end }}
{{- if not $v.devMode.enabled }}
{{- if and $v.signing.existingSecret $v.signing.keys }}
{{- fail "\n\ntessera: set only one of signing.keys (a chart-managed Secret) and signing.existingSecret." }}
{{- end }}
{{- if and $v.signing.existingSecret (not $v.signing.existingSecretKeys) }}
{{- fail "\n\ntessera: signing.existingSecret needs signing.existingSecretKeys: the Secret's keys (PEM file names) in signing order, the first one signing." }}
{{- end }}
{{- if and (not $v.signing.existingSecret) (not $v.signing.keys) }}
{{- fail "\n\ntessera: no signing key. Generate one with `tessera keygen --out signing-key.pem` and pass it with --set-file 'signing.keys[0].pem=signing-key.pem', or name an existing Secret with signing.existingSecret and signing.existingSecretKeys. (For a throwaway trial with generated keys: devMode.enabled=true and devMode.acknowledgeNotForProduction=true.)" }}
{{- end }}
{{- $files := include "tessera.signingKeyFiles" . | fromJsonArray }}
{{- if ne (len $files) (len (uniq $files)) }}
{{- fail "\n\ntessera: signing key file names must be unique (signing.keys[].name or signing.existingSecretKeys)." }}
{{- end }}
{{- range $name, $_ := $v.config.files }}
{{- if or (eq $name "tessera.toml") (eq $name "policy.cedar") }}
{{- fail (printf "\n\ntessera: config.files cannot hold %s: the chart writes it (use config.* or policy.cedar)." $name) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
