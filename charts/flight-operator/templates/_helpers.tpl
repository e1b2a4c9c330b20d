{{/* Chart name. */}}
{{- define "flight-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the operator's objects: the release name, plus the chart name unless the
release name already contains it. */}}
{{- define "flight-operator.fullname" -}}
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

{{- define "flight-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object of the release carries. */}}
{{- define "flight-operator.commonLabels" -}}
helm.sh/chart: {{ include "flight-operator.chart" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: flight-operator
{{- end }}

{{/* Labels of the operator's objects. */}}
{{- define "flight-operator.labels" -}}
{{ include "flight-operator.commonLabels" . }}
app.kubernetes.io/name: {{ include "flight-operator.name" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Selector of the operator's pods (immutable: never add to it). */}}
{{- define "flight-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flight-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "flight-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "flight-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* image reference from {repository, tag, digest}; the tag defaults to appVersion. */}}
{{- define "flight-operator.imageRef" -}}
{{- $image := index . 0 }}
{{- $root := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{- define "flight-operator.image" -}}
{{- include "flight-operator.imageRef" (list .Values.image .) }}
{{- end }}

{{- define "flight-operator.nodeImage" -}}
{{- include "flight-operator.imageRef" (list .Values.nodeImage .) }}
{{- end }}

{{/* Namespace the operator watches in namespaced mode. */}}
{{- define "flight-operator.watchNamespace" -}}
{{- default .Release.Namespace .Values.namespaced.namespace }}
{{- end }}

{{- define "flight-operator.leaseName" -}}
{{- default (include "flight-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* Dev MinIO. */}}
{{- define "flight-operator.minio.namespace" -}}
{{- default .Release.Namespace .Values.minio.namespace }}
{{- end }}

{{- define "flight-operator.minio.endpoint" -}}
{{- printf "http://%s.%s.svc:9000" .Values.minio.name (include "flight-operator.minio.namespace" .) }}
{{- end }}

{{- define "flight-operator.minio.labels" -}}
{{ include "flight-operator.commonLabels" . }}
app.kubernetes.io/name: minio
app.kubernetes.io/component: dev-object-storage
{{- end }}

{{- define "flight-operator.minio.selectorLabels" -}}
app.kubernetes.io/name: minio
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The chart's FlightPool. */}}
{{- define "flight-operator.pool.namespace" -}}
{{- default .Release.Namespace .Values.pool.namespace }}
{{- end }}

{{/* "true" when the chart creates a FlightPool: asked for, and it has storage. */}}
{{- define "flight-operator.pool.enabled" -}}
{{- if and .Values.pool.create (or .Values.minio.enabled .Values.pool.storage.url) }}true{{ end }}
{{- end }}

{{- define "flight-operator.pool.credentialsSecret" -}}
{{- if .Values.minio.enabled }}
{{- printf "%s-storage" .Values.pool.name }}
{{- else }}
{{- .Values.pool.storage.credentialsSecret }}
{{- end }}
{{- end }}

{{/*
Permissions of the operator in the namespaces it watches, verb by verb what the code calls:
- ArrowDatasets: list/watch (controller and cache), create (discovery of uploaded datasets),
  patch (finalizer add/remove, a JSON patch), delete (expiry); status: patch (server-side apply).
- FlightPools: list/watch (controller), get (the dataset controller reads its pool); status:
  patch; finalizers: update, because the objects a pool owns carry an ownerReference with
  blockOwnerDeletion, which the API server only admits with that permission.
- StatefulSets, Services, ConfigMaps, PodDisruptionBudgets: list/watch (owned objects),
  patch (server-side apply) and create (an apply that creates the object also needs create).
- Secrets: get only (storage credentials and the operator's node token, read by name).
- Events (events.k8s.io): create, patch (the recorder patches a repeated event's series).
*/}}
{{- define "flight-operator.rules" -}}
- apiGroups: ["arrow.trinity.io"]
  resources: ["arrowdatasets"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["arrow.trinity.io"]
  resources: ["arrowdatasets/status"]
  verbs: ["patch"]
- apiGroups: ["arrow.trinity.io"]
  resources: ["flightpools"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["arrow.trinity.io"]
  resources: ["flightpools/status"]
  verbs: ["patch"]
- apiGroups: ["arrow.trinity.io"]
  resources: ["flightpools/finalizers"]
  verbs: ["update"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
