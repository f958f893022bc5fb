{{/*
Names. Object names are "<fullname>-<component>", cut to 63 characters.
*/}}
{{- define "tollgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tollgate.fullname" -}}
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

{{/* "<fullname>-<component>", e.g. include "tollgate.componentName" (list . "gateway") */}}
{{- define "tollgate.componentName" -}}
{{- $root := index . 0 }}
{{- printf "%s-%s" (include "tollgate.fullname" $root | trunc 50 | trimSuffix "-") (index . 1) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tollgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object: include "tollgate.labels" (list . "gateway").
The chart version is here, never in selectors (selectors are immutable).
*/}}
{{- define "tollgate.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ include "tollgate.chart" $root }}
{{ include "tollgate.selectorLabels" . }}
app.kubernetes.io/part-of: tollgate
{{- with $root.Chart.AppVersion }}
app.kubernetes.io/version: {{ . | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
{{- with $root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels: name, instance and component only. */}}
{{- define "tollgate.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "tollgate.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/*
An image reference from {registry, repository, tag, digest}:
include "tollgate.image" (list . .Values.gateway.image). A registry replaces the host that
starts the repository (a first part with "." or ":", or "localhost") or, without one, goes
before it.
*/}}
{{- define "tollgate.image" -}}
{{- $root := index . 0 }}
{{- $image := index . 1 }}
{{- $tag := $image.tag | default $root.Chart.AppVersion | toString }}
{{- $repository := $image.repository }}
{{- with $image.registry }}
{{- $parts := splitList "/" $repository }}
{{- $first := first $parts }}
{{- if and (gt (len $parts) 1) (or (contains "." $first) (contains ":" $first) (eq "localhost" $first)) }}
{{- $repository = join "/" (rest $parts) }}
{{- end }}
{{- $repository = printf "%s/%s" (trimSuffix "/" .) $repository }}
{{- end }}
{{- if $image.digest }}
{{- printf "%s:%s@%s" $repository $tag $image.digest }}
{{- else }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}
{{- end }}


{{/* The Secret every component reads. */}}
{{- define "tollgate.secretName" -}}
{{- .Values.secrets.name | default (include "tollgate.componentName" (list . "secrets")) }}
{{- end }}

{{- define "tollgate.gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create }}
{{- .Values.gateway.serviceAccount.name | default (include "tollgate.componentName" (list . "gateway")) }}
{{- else }}
{{- .Values.gateway.serviceAccount.name | default "default" }}
{{- end }}
{{- end }}

{{- define "tollgate.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- .Values.operator.serviceAccount.name | default (include "tollgate.componentName" (list . "operator")) }}
{{- else }}
{{- .Values.operator.serviceAccount.name | default "default" }}
{{- end }}
{{- end }}

{{/* Host names of the bundled databases. */}}
{{- define "tollgate.postgresql.host" -}}
{{- printf "%s.%s.svc" (include "tollgate.componentName" (list . "postgresql")) .Release.Namespace }}
{{- end }}

{{- define "tollgate.redis.host" -}}
{{- printf "%s.%s.svc" (include "tollgate.componentName" (list . "redis")) .Release.Namespace }}
{{- end }}

{{/* OLLAMA_BASE_URL: the value, else the default pool (when the chart creates one), else unset. */}}
{{- define "tollgate.ollamaBaseUrl" -}}
{{- if .Values.gateway.ollamaBaseUrl }}
{{- .Values.gateway.ollamaBaseUrl }}
{{- else if .Values.defaultPool.enabled }}
{{- printf "http://%s.%s.svc:11434" (include "tollgate.pool.serviceName" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{/* Secret-backed environment variables of the gateway, the migration and the operator. */}}
{{- define "tollgate.secretEnv" -}}
{{- $secret := include "tollgate.secretName" . }}
- name: POSTGRES_DSN
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: POSTGRES_DSN
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: REDIS_URL
- name: JWT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: JWT_SECRET
- name: ADMIN_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: ADMIN_PASSWORD
      optional: true
- name: TOLLGATE_KEY_PEPPER
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: TOLLGATE_KEY_PEPPER
{{- end }}

{{/* Settings maps ({NAME: value}) as EnvVar objects, values quoted. */}}
{{- define "tollgate.settingsEnv" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/*
When the migration Job runs. Before install only when everything it needs exists before
the chart's own objects: the Secret is yours and the database is not the bundled one.
Otherwise after install (pods wait in an init container until the schema is at head).
Upgrades always migrate before any pod changes.
*/}}
{{- define "tollgate.migration.hook" -}}
{{- if or .Values.secrets.create .Values.postgresql.enabled -}}
post-install,pre-upgrade
{{- else -}}
pre-install,pre-upgrade
{{- end }}
{{- end }}

{{/* A secret value: the one given, else the stored one, else random: (list $stored KEY given length) */}}
{{- define "tollgate.secretValue" -}}
{{- $stored := index . 0 }}
{{- $key := index . 1 }}
{{- $given := index . 2 }}
{{- if $given }}
{{- $given }}
{{- else if hasKey $stored $key }}
{{- index $stored $key | b64dec }}
{{- else }}
{{- randAlphaNum (index . 3) }}
{{- end }}
{{- end }}

{{/* Only POSTGRES_DSN, for containers that need nothing else. */}}
{{- define "tollgate.dsnEnv" -}}
- name: POSTGRES_DSN
  valueFrom:
    secretKeyRef:
      name: {{ include "tollgate.secretName" . }}
      key: POSTGRES_DSN
{{- end }}

{{/*
The operator's permissions on what it reconciles and creates (a ClusterRole, or a Role per
watched namespace): exactly the verbs it uses, per resource. Its children are written with
server-side apply (a patch, which the API server authorizes as create too when the object
is new) and deleted by the garbage collector through owner references, so there is no
update or delete on them, and no list or watch on Secrets. Nothing else: no exec, no nodes,
no other workloads.
*/}}
{{- define "tollgate.operator.rules" -}}
# Its resources: read, watch, and patch (kopf's finalizer and bookkeeping annotations).
- apiGroups: ["tollgate.dev"]
  resources: ["apikeys", "modelaliases", "ollamapools"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["tollgate.dev"]
  resources: ["apikeys/status", "modelaliases/status", "ollamapools/status"]
  verbs: ["patch"]
# Owner references with blockOwnerDeletion need update on the owner's finalizers.
- apiGroups: ["tollgate.dev"]
  resources: ["apikeys/finalizers", "modelaliases/finalizers", "ollamapools/finalizers"]
  verbs: ["update"]
# Key Secrets (and reading a user's Secret named by spec.existingSecret); a pool's
# ClusterIP Service (read for its address).
- apiGroups: [""]
  resources: ["secrets", "services"]
  verbs: ["get", "create", "patch"]
# Each pool's ServiceAccount (no permissions, no token), StatefulSet, PodDisruptionBudget
# and NetworkPolicy.
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["create", "patch"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "create", "patch"]
# Autoscaling (spec.autoscaling): a pool's replicas, through the scale subresource only.
- apiGroups: ["apps"]
  resources: ["statefulsets/scale"]
  verbs: ["patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["create", "patch"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["create", "patch"]
# Pool pods: listed and watched (their IPs and readiness, to pull models on each).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# Events about what it did.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/* The default pool's Service: the operator names it after the pool. */}}
{{- define "tollgate.pool.serviceName" -}}
{{- .Values.defaultPool.name }}
{{- end }}

{{/* A checksum of what the chart-made Secret is made from (not of random values). */}}
{{- define "tollgate.secretsChecksum" -}}
{{- list .Values.secrets .Values.postgresql.enabled .Values.postgresql.password .Values.postgresql.username .Values.postgresql.database .Values.redis.enabled .Values.redis.password | toJson | sha256sum }}
{{- end }}

{{/*
A label selector string ("k=v,k=v") for the operator's settings: the given labels, else the
component's selector labels in this release: include "tollgate.podSelector" (list . "gateway" $labels)
*/}}
{{- define "tollgate.podSelector" -}}
{{- $root := index . 0 }}
{{- $labels := index . 2 }}
{{- if not $labels }}
{{- $labels = include "tollgate.selectorLabels" (list $root (index . 1)) | fromYaml }}
{{- end }}
{{- $pairs := list }}
{{- range $k := keys $labels | sortAlpha }}
{{- $pairs = append $pairs (printf "%s=%s" $k (get $labels $k)) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}
